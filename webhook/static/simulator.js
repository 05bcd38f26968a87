/* hoctap browser chat simulator: talks to /simulator/api/* as the web chat in the URL (?chat=...). */
(function () {
  "use strict";

  var cfg = window.HOCTAP_SIM || {};
  var ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
  var params = new URLSearchParams(location.search);
  var messagesEl = document.getElementById("messages");
  var form = document.getElementById("composer");
  var input = document.getElementById("text-input");
  var photoInput = document.getElementById("photo-input");
  var personaSel = document.getElementById("persona");
  var commands = document.getElementById("commands");
  var seen = {};
  var lastId = 0;
  var busy = 0;
  var contactMode = false;
  var typingEl = null;

  function newId(prefix) {
    var raw = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2);
    return (prefix || "") + raw.replace(/[^A-Za-z0-9-]/g, "").slice(0, 40);
  }

  // --- which chat this tab is ------------------------------------------------------------------------
  var chatId = params.get("chat");
  if (!chatId || !ID_RE.test(chatId)) {
    var stored = sessionStorage.getItem("hoctap.chat");
    chatId = stored && ID_RE.test(stored) ? stored : (cfg.newChatId || newId("web-"));
  }
  sessionStorage.setItem("hoctap.chat", chatId);
  var startParam = params.get("start");
  params.set("chat", chatId);
  params.delete("start");
  history.replaceState(null, "", location.pathname + "?" + params.toString());
  document.getElementById("chat-id-label").textContent = chatId;
  if ((cfg.personas || []).indexOf(chatId) >= 0) personaSel.value = chatId;

  personaSel.addEventListener("change", function () {
    go(personaSel.value || newId("web-"));
  });
  document.getElementById("new-chat").addEventListener("click", function () { go(newId("web-")); });

  function go(id) {
    sessionStorage.setItem("hoctap.chat", id);
    location.href = "/simulator?chat=" + encodeURIComponent(id);
  }

  // --- rendering ------------------------------------------------------------------------------------
  function timeLabel(iso) {
    var d = iso ? new Date(iso) : new Date();
    return ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
  }

  function scrollDown() { messagesEl.scrollTop = messagesEl.scrollHeight; }

  function bubble(side, text, at) {
    var row = document.createElement("div");
    row.className = "msg msg-" + side;
    var b = document.createElement("div");
    b.className = "bubble";
    var body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    b.appendChild(body);
    var time = document.createElement("span");
    time.className = "time";
    time.textContent = timeLabel(at);
    b.appendChild(time);
    row.appendChild(b);
    messagesEl.insertBefore(row, typingEl && typingEl.parentNode === messagesEl ? typingEl : null);
    return row;
  }

  function renderBot(m) {
    if (seen[m.id]) return;
    seen[m.id] = true;
    if (m.id > lastId) lastId = m.id;
    var row = bubble("bot", m.text, m.at);
    row.dataset.id = m.id;
    row.setAttribute("data-testid", "bot-message");
    var buttons = m.buttons || [];
    if (buttons.length || m.request_contact) {
      var kb = document.createElement("div");
      kb.className = "keyboard";
      // two columns when every label fits in half a phone's width, like Telegram's inline keyboards
      var long = buttons.some(function (b) { return b.label.length > 18; });
      if (long || buttons.length < 2) kb.classList.add("keyboard-wide");
      row.classList.add("has-keyboard");
      buttons.forEach(function (btn) {
        var el = document.createElement("button");
        el.type = "button";
        el.className = "kb-btn";
        el.textContent = btn.label;
        el.addEventListener("click", function () {
          send({ kind: "button", text: btn.label, value: btn.value }, btn.label);
        });
        kb.appendChild(el);
      });
      if (m.request_contact) {
        var share = document.createElement("button");
        share.type = "button";
        share.className = "kb-btn kb-contact";
        share.textContent = "📱 Gửi số điện thoại";
        share.addEventListener("click", startContact);
        kb.appendChild(share);
      }
      row.querySelector(".bubble").after(kb);
    }
  }

  function renderUser(text, at, photoUrl) {
    var row = bubble("user", text, at);
    if (photoUrl) {
      var img = document.createElement("img");
      img.src = photoUrl;
      img.alt = "Ảnh đã gửi";
      img.className = "photo";
      var bodyEl = row.querySelector(".text");
      bodyEl.textContent = "";
      bodyEl.appendChild(img);
    }
    scrollDown();
    return row;
  }

  function notice(text) {
    var row = document.createElement("div");
    row.className = "notice";
    row.textContent = text;
    messagesEl.appendChild(row);
    scrollDown();
    return row;
  }

  function setTyping(on) {
    if (on && !typingEl) {
      typingEl = document.createElement("div");
      typingEl.className = "msg msg-bot typing";
      typingEl.innerHTML = '<div class="bubble"><span></span><span></span><span></span></div>';
      messagesEl.appendChild(typingEl);
      scrollDown();
    } else if (!on && typingEl) {
      typingEl.remove();
      typingEl = null;
    }
  }

  function showReply(data) {
    (data.messages || []).forEach(renderBot);
    if (data.last_id > lastId) lastId = data.last_id;
    scrollDown();
  }

  // --- talking to the server ------------------------------------------------------------------------
  function request(url, options, attempt) {
    attempt = attempt || 0;
    return fetch(url, options).then(function (resp) {
      if (resp.ok) return resp.json();
      return resp.json().catch(function () { return {}; }).then(function (body) {
        var err = new Error(typeof body.detail === "string" ? body.detail : "HTTP " + resp.status);
        err.status = resp.status;
        throw err;
      });
    }, function (netErr) {
      // network hiccup: resend with the same client_msg_id, the server processes it once
      if (attempt < 2) {
        return new Promise(function (r) { setTimeout(r, 600 * (attempt + 1)); }).then(function () {
          return request(url, options, attempt + 1);
        });
      }
      throw netErr;
    });
  }

  function failed(err) {
    notice("⚠️ Chưa gửi được (" + (err && err.message ? err.message : "lỗi mạng") + "). Anh/Chị thử lại nhé.");
  }

  function begin() { busy += 1; setTyping(true); }
  function end() { busy -= 1; if (busy <= 0) { busy = 0; setTyping(false); } }

  function send(msg, shownText, clientMsgId) {
    var hello = messagesEl.querySelector(".welcome");
    if (hello) hello.remove();
    renderUser(shownText != null ? shownText : msg.text);
    var body = {
      chat_id: chatId,
      kind: msg.kind,
      text: msg.text || "",
      value: msg.value || "",
      client_msg_id: clientMsgId || newId("m-"),
      after: lastId
    };
    begin();
    return request("/simulator/api/send", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body)
    }).then(showReply, failed).then(end, end);
  }

  function sendPhoto(file) {
    var url = URL.createObjectURL(file);
    renderUser("", null, url);
    var fd = new FormData();
    fd.append("chat_id", chatId);
    fd.append("client_msg_id", newId("p-"));
    fd.append("after", String(lastId));
    fd.append("file", file, file.name || "photo.jpg");
    begin();
    return request("/simulator/api/photo", { method: "POST", body: fd }).then(showReply, failed).then(end, end);
  }

  function poll() {
    if (busy || document.hidden) return;
    request("/simulator/api/messages?chat_id=" + encodeURIComponent(chatId) + "&after=" + lastId, {}, 2)
      .then(showReply, function () { /* next poll retries */ });
  }

  function startContact() {
    contactMode = true;
    input.value = "";
    input.placeholder = "Số điện thoại, ví dụ: 0912 345 678";
    input.type = "tel";
    input.focus();
  }

  // --- composer -------------------------------------------------------------------------------------
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    commands.hidden = true;
    if (contactMode) {
      contactMode = false;
      input.type = "text";
      input.placeholder = "Nhập tin nhắn…";
      send({ kind: "contact", text: text }, "📱 " + text);
      return;
    }
    send({ kind: "text", text: text });
  });

  photoInput.addEventListener("change", function () {
    var file = photoInput.files && photoInput.files[0];
    photoInput.value = "";
    if (file) sendPhoto(file);
  });

  document.getElementById("menu-btn").addEventListener("click", function () {
    commands.hidden = !commands.hidden;
  });
  commands.addEventListener("click", function (ev) {
    var cmd = ev.target.closest("button[data-command]");
    if (!cmd) return;
    commands.hidden = true;
    send({ kind: "text", text: cmd.dataset.command });
  });

  // --- start ----------------------------------------------------------------------------------------
  function welcome() {
    var row = document.createElement("div");
    row.className = "welcome";
    row.setAttribute("data-testid", "welcome");
    var p = document.createElement("p");
    p.textContent = "Đây là trình mô phỏng: Anh/Chị trò chuyện với trợ lý như trên Zalo hoặc Telegram.";
    var go = document.createElement("button");
    go.type = "button";
    go.className = "kb-btn start-btn";
    go.textContent = "Bắt đầu";
    go.addEventListener("click", function () { row.remove(); send({ kind: "text", text: "/start" }); });
    row.appendChild(p);
    row.appendChild(go);
    messagesEl.appendChild(row);
  }

  request("/simulator/api/history?chat_id=" + encodeURIComponent(chatId), {}).then(function (data) {
    (data.items || []).forEach(function (item) {
      if (item.side === "bot") renderBot(item);
      else renderUser(item.photo ? "📷 Ảnh đã gửi" : item.text, item.at);
    });
    if (data.last_id > lastId) lastId = data.last_id;
    scrollDown();
    if (startParam && /^[A-Za-z0-9_-]{1,64}$/.test(startParam)) {
      // a fixed client_msg_id: reloading the invite link does not start the conversation twice
      send({ kind: "text", text: "/start " + startParam }, "/start " + startParam, "start-" + startParam.slice(0, 50));
    } else if (!(data.items || []).length) {
      welcome();
    }
  }, failed).then(function () {
    setInterval(poll, 3000);
    document.body.dataset.ready = "1";
  });
})();
