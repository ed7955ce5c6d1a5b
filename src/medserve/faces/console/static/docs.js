// Swagger UI from the bundled assets (no inline script: the page's CSP forbids it).
// With security on, /openapi.json needs a key: the page asks for it, keeps it in this tab's
// sessionStorage only, sends it with every request, and pre-fills the Authorize dialog.
(function () {
  "use strict";
  var SPEC = "/openapi.json";
  var STORE = "medserve-docs-key";

  function boot(key) {
    var options = {
      url: SPEC,
      dom_id: "#swagger-ui",
      deepLinking: true,
      persistAuthorization: false,
      requestInterceptor: function (request) {
        var current = window.sessionStorage.getItem(STORE);
        if (current && !request.headers.Authorization) {
          request.headers.Authorization = "Bearer " + current;
        }
        return request;
      },
      onComplete: function () {
        var current = window.sessionStorage.getItem(STORE);
        if (current) { ui.preauthorizeApiKey("bearer", current); }
      }
    };
    var ui = window.SwaggerUIBundle(options);
    window.medserveDocs = ui;
  }

  function askForKey(message) {
    var form = document.getElementById("docs-key");
    var error = document.getElementById("docs-key-error");
    form.hidden = false;
    error.textContent = message || "";
    if (form.getAttribute("data-bound")) { return; }  // one listener, however often it asks
    form.setAttribute("data-bound", "1");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var key = document.getElementById("docs-key-input").value.trim();
      if (!key) { return; }
      tryKey(key);
    });
  }

  function tryKey(key) {
    var headers = key ? { Authorization: "Bearer " + key } : {};
    fetch(SPEC, { headers: headers, credentials: "omit" }).then(function (response) {
      if (response.ok) {
        if (key) { window.sessionStorage.setItem(STORE, key); }
        document.getElementById("docs-key").hidden = true;
        boot(key);
      } else if (response.status === 401 || response.status === 403) {
        window.sessionStorage.removeItem(STORE);
        askForKey(key ? "That key was refused (" + response.status + ")." : "");
      } else {
        askForKey("The server answered " + response.status + ".");
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    tryKey(window.sessionStorage.getItem(STORE) || "");
  });
})();
