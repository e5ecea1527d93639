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
