// pgshift dashboard: the lag chart on a migration's page (uPlot), refreshed every 5 s.
(function () {
  "use strict";
  var el = document.getElementById("lag-chart");
  if (!el || typeof uPlot === "undefined") return;
  var src = el.getAttribute("data-src");
  var range = "1h";
  var plot = null;

  function options(width) {
    return {
      width: width,
      height: 240,
      series: [
        {},
        { label: "lag (s)", stroke: "#cf222e", width: 2, scale: "s", value: function (u, v) { return v == null ? "-" : v.toFixed(2) + " s"; } },
        { label: "applied (events/s)", stroke: "#1f6feb", width: 1.5, scale: "r", value: function (u, v) { return v == null ? "-" : Math.round(v) + "/s"; } }
      ],
      axes: [
        {},
        { scale: "s", label: "lag (s)" },
        { scale: "r", side: 1, label: "events/s", grid: { show: false } }
      ],
      scales: { s: { range: function (u, min, max) { return [0, Math.max(1, max)]; } } }
    };
  }

  function draw(data) {
    var rows = [data.t, data.lag, data.rate];
    var empty = document.getElementById("lag-empty");
    if (empty) empty.style.display = data.t.length ? "none" : "block";
    el.setAttribute("data-points", String(data.t.length));
    if (!plot) {
      plot = new uPlot(options(el.clientWidth || 1100), rows, el);
    } else {
      plot.setData(rows);
    }
  }

  function load() {
    fetch(src + "?range=" + range, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) { if (d) draw(d); })
      .catch(function () {});
  }

  document.querySelectorAll("[data-range]").forEach(function (b) {
    b.addEventListener("click", function () {
      range = b.getAttribute("data-range");
      document.querySelectorAll("[data-range]").forEach(function (o) { o.classList.toggle("on", o === b); });
      load();
    });
  });
  window.addEventListener("resize", function () { if (plot) plot.setSize({ width: el.clientWidth, height: 240 }); });
  load();
  setInterval(load, 5000);
})();

// The cutover panel: the button is enabled only when every gate passes and the migration's name
// is typed; the gates' poll is held back while the tab is hidden (no load on the servers for a
// screen nobody looks at). The server checks both again when the form is sent.
(function () {
  "use strict";
  var form = document.getElementById("cutover-form");
  function update() {
    if (!form) return;
    var gates = document.getElementById("gates");
    var confirm = document.getElementById("cutover-confirm");
    var button = document.getElementById("cutover-start");
    var ready = gates && gates.getAttribute("data-all-passed") === "true";
    button.disabled = !(ready && confirm.value.trim() === form.getAttribute("data-migration"));
  }
  document.addEventListener("htmx:beforeRequest", function (e) {
    var elt = e.detail && e.detail.elt;
    var polled = elt && elt.hasAttribute && elt.hasAttribute("data-poll-visible");
    if (polled && document.hidden) e.preventDefault();
  });
  document.addEventListener("htmx:afterSettle", update);
  if (form) {
    document.getElementById("cutover-confirm").addEventListener("input", update);
    form.addEventListener("submit", function (e) {
      update();
      if (document.getElementById("cutover-start").disabled) e.preventDefault();
    });
  }
  update();
})();
