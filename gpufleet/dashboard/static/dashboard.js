// gpufleet dashboard: the server pushes each page's live fragment as a server-sent event; this swaps it in.
// No polling: EventSource keeps one stream open and reconnects by itself if it drops.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var conn = document.getElementById("conn");
  if (!live || !live.dataset.stream || !window.EventSource) {
    if (conn) { conn.textContent = "static"; }
    return;
  }
  function state(text, cls) {
    if (conn) { conn.textContent = text; conn.className = "conn " + cls; }
  }
  var source = new EventSource(live.dataset.stream);
  source.addEventListener("open", function () { state("live", "ok"); });
  source.addEventListener("error", function () { state("reconnecting", "bad"); });
  source.addEventListener("fragment", function (e) {
    // Server-rendered HTML, escaped there: every stranger's text in it is already inert.
    live.innerHTML = e.data;
    live.dataset.pushes = String((parseInt(live.dataset.pushes || "0", 10) || 0) + 1);
    state("live", "ok");
  });
  window.addEventListener("pagehide", function () { source.close(); });
})();
