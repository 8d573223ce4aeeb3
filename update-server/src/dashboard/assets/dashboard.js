// Slipway dashboard: live updates. The pages work without this script; with it, the server's
// Server-Sent Events (/api/stream) say when something changed, and the page body is fetched
// again and swapped in place (no reload; the filter form keeps focus and what was typed).
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  var main = document.getElementById("live");
  if (!window.EventSource || !main) return;
  var pending = null, inflight = false, again = false;

  function refresh() {
    if (inflight) { again = true; return; }
    inflight = true;
    fetch(location.pathname + location.search, { headers: { "X-Slipway-Fragment": "1" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var active = document.activeElement;
        if (active && main.contains(active) && active.closest("form")) {
          // Someone is typing a filter: do not replace the form under their cursor.
          var form = active.closest("form");
          var fresh = document.createElement("div");
          fresh.innerHTML = html;
          Array.prototype.forEach.call(main.children, function (el) {
            if (el !== form) el.remove();
          });
          Array.prototype.forEach.call(fresh.children, function (el) {
            if (el.tagName !== "FORM") main.appendChild(el);
          });
        } else {
          var seen = {};
          main.querySelectorAll("[data-event-id]").forEach(function (li) { seen[li.dataset.eventId] = true; });
          main.innerHTML = html;
          main.querySelectorAll("[data-event-id]").forEach(function (li) {
            if (!seen[li.dataset.eventId] && Object.keys(seen).length) li.classList.add("fresh");
          });
        }
        document.body.dataset.refreshed = String(Date.now());
      })
      .catch(function () {})
      .then(function () {
        inflight = false;
        if (again) { again = false; refresh(); }
      });
  }

  var source = new EventSource("/api/stream");
  source.addEventListener("open", function () { status.textContent = "live"; status.className = "on"; });
  source.addEventListener("error", function () { status.textContent = "reconnecting…"; status.className = ""; });
  // A page nobody looks at (a background tab) does not refresh; it catches up once shown.
  var missed = false;
  source.addEventListener("change", function () {
    if (document.hidden) { missed = true; return; }
    clearTimeout(pending);
    pending = setTimeout(refresh, 150);
  });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && missed) { missed = false; refresh(); }
  });

  // Filters apply as they are chosen, without a round trip through the submit button.
  document.addEventListener("change", function (e) {
    var form = e.target.closest && e.target.closest("form#machine-filter");
    if (form && e.target.tagName === "SELECT") form.submit();
  });
})();
