/* Live charts on the vendored uPlot: loss & learning rate over steps, quality over validations.
 * Points arrive from the `history` SSE event: a full series on (re)connect, then deltas. */
(function () {
  "use strict";

  const AXIS = {
    stroke: "#8b96a5",
    grid: { stroke: "#222b39", width: 1 },
    ticks: { stroke: "#222b39", width: 1 },
    font: "11px system-ui, sans-serif",
  };
  const MAX_POINTS = 20000;
  // steps are integers: no tick at 5.5
  const STEP_INCRS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2500, 5e3, 1e4, 2e4, 25e3, 5e4, 1e5, 2e5, 25e4, 5e5, 1e6, 2e6, 5e6, 1e7];

  const sci = (v) => (v == null ? "—" : Number(v).toExponential(2));
  const fixed = (n) => (u, v) => (v == null ? "—" : Number(v).toFixed(n));
  const pct = (u, v) => (v == null ? "—" : Number(v).toFixed(2) + " %");

  class SeriesChart {
    /** columns: [xKey, ...yKeys]; transform(point) → row of numbers (or null) per column. */
    constructor(el, options, transform, emptyText) {
      this.el = el;
      this.options = options;
      this.transform = transform;
      this.emptyText = emptyText;
      this.data = options.series.map(() => []);
      this.plot = null;
      this.showEmpty();
      if (window.ResizeObserver) {
        new ResizeObserver(() => this.resize()).observe(el);
      }
    }

    showEmpty() {
      this.el.replaceChildren();
      const empty = document.createElement("div");
      empty.className = "chart-empty";
      empty.textContent = this.emptyText;
      this.el.appendChild(empty);
    }

    size() {
      return { width: Math.max(this.el.clientWidth, 240), height: 240 };
    }

    resize() {
      if (this.plot) this.plot.setSize(this.size());
    }

    reset(points) {
      this.data = this.options.series.map(() => []);
      this.append(points);
      if (!this.data[0].length) {
        if (this.plot) this.plot.destroy();
        this.plot = null;
        this.showEmpty();
      }
    }

    append(points) {
      if (!points || !points.length) return;
      for (const p of points) {
        const row = this.transform(p);
        const xs = this.data[0];
        // Replace a point at the same x (a second validation at one step), keep x sorted.
        if (xs.length && row[0] <= xs[xs.length - 1]) {
          let i = xs.length - 1;
          while (i >= 0 && xs[i] > row[0]) i--;
          if (i >= 0 && xs[i] === row[0]) {
            row.forEach((v, c) => (this.data[c][i] = v));
            continue;
          }
          row.forEach((v, c) => this.data[c].splice(i + 1, 0, v));
          continue;
        }
        row.forEach((v, c) => this.data[c].push(v));
      }
      const extra = this.data[0].length - MAX_POINTS;
      if (extra > 0) this.data = this.data.map((col) => col.slice(extra));
      this.draw();
    }

    draw() {
      if (!window.uPlot) return;
      if (!this.plot) {
        this.el.replaceChildren();
        this.plot = new window.uPlot({ ...this.options, ...this.size() }, this.data, this.el);
      } else {
        this.plot.setData(this.data);
      }
    }
  }

  const positive = (v) => (v == null || v <= 0 ? null : v);

  function lossChart(el) {
    return new SeriesChart(
      el,
      {
        cursor: { drag: { x: true, y: false } },
        scales: { x: { time: false }, loss: { distr: 3 }, lr: {} },
        legend: { live: true },
        series: [
          { label: "step", value: (u, v) => (v == null ? "—" : String(v)) },
          { label: "total loss", scale: "loss", stroke: "#5b9cff", width: 2, value: fixed(5) },
          { label: "L1", scale: "loss", stroke: "#3fcf8e", width: 1.5, value: fixed(5) },
          { label: "gradient", scale: "loss", stroke: "#a78bfa", width: 1, value: fixed(5), show: false },
          { label: "learning rate", scale: "lr", stroke: "#f2b63c", width: 1.5, dash: [6, 4], value: (u, v) => sci(v) },
        ],
        axes: [
          { ...AXIS, label: "step", labelSize: 18, incrs: STEP_INCRS },
          { ...AXIS, scale: "loss", label: "loss", labelSize: 18, size: 60 },
          {
            ...AXIS,
            scale: "lr",
            side: 1,
            size: 70,
            grid: { show: false },
            values: (u, vals) => vals.map((v) => (v == null ? "" : Number(v).toExponential(1))),
          },
        ],
      },
      (p) => [p.step, positive(p.total), positive(p.l1), positive(p.gradient), p.learning_rate],
      "Waiting for the first logged step…"
    );
  }

  function qualityChart(el) {
    const pts = { show: true, size: 6 };
    return new SeriesChart(
      el,
      {
        scales: { x: { time: false }, q: {}, imp: {} },
        series: [
          { label: "step", value: (u, v) => (v == null ? "—" : String(v)) },
          { label: "bicubic (LR)", scale: "q", stroke: "#8b96a5", width: 1.5, points: pts, value: pct },
          { label: "output (KI)", scale: "q", stroke: "#5b9cff", width: 2, points: pts, value: pct },
          { label: "improvement", scale: "imp", stroke: "#3fcf8e", width: 1.5, dash: [6, 4], points: pts, value: pct },
        ],
        axes: [
          { ...AXIS, label: "step", labelSize: 18, incrs: STEP_INCRS },
          { ...AXIS, scale: "q", label: "quality %", labelSize: 18, size: 55 },
          {
            ...AXIS,
            scale: "imp",
            side: 1,
            size: 60,
            grid: { show: false },
            values: (u, vals) => vals.map((v) => (v == null ? "" : v.toFixed(2))),
          },
        ],
      },
      (p) => [
        p.step,
        p.quality_lr == null ? null : p.quality_lr * 100,
        p.quality_ki == null ? null : p.quality_ki * 100,
        p.improvement == null ? null : p.improvement * 100,
      ],
      "No validation yet: press Validate, or wait for the schedule."
    );
  }

  window.PanelCharts = { lossChart, qualityChart };
})();
