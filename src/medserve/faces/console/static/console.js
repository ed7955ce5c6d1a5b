// The console works without JavaScript; this file only adds what needs it: the streamed chat.
(function () {
  "use strict";
  function chat() {
    var form = document.getElementById("chat-form");
    if (!form || !window.fetch || !window.TextDecoder) { return; }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var log = document.getElementById("chat-answer");
      var sent = document.getElementById("chat-sent");
      var status = document.getElementById("chat-status");
      log.textContent = "";
      sent.textContent = "";
      status.textContent = "Answering...";
      fetch(form.getAttribute("data-stream"), {
        method: "POST", body: new FormData(form), credentials: "same-origin"
      }).then(function (response) {
        if (!response.ok || !response.body) {
          return response.text().then(function (text) {
            status.textContent = "Refused (" + response.status + "): " + text;
          });
        }
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { status.textContent = "Done."; return; }
            buffer += decoder.decode(chunk.value, { stream: true });
            var lines = buffer.split("\n");
            buffer = lines.pop();
            lines.forEach(function (line) {
              if (!line) { return; }
              var message = JSON.parse(line);
              if (message.sent !== undefined) {
                sent.textContent = message.sent;
                document.getElementById("chat-redacted").textContent = message.redacted.length
                  ? "Redacted before sending: " + message.redacted.join(", ") + "."
                  : "Nothing was redacted.";
              }
              if (message.text) { log.textContent += message.text; }
              if (message.error) { status.textContent = "Refused: " + message.error; }
            });
            return pump();
          });
        }
        return pump();
      });
    });
  }
  document.addEventListener("DOMContentLoaded", chat);
})();
