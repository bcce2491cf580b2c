// Small hand-drawn SVG charts for the ComPO dashboard (no library, no build step).
//
// Charts.draw(svg, spec) redraws one chart. spec = {
//   series: [{name, label, kind: "points" | "line" | "bars", color, points: [[x, y], ...],
//             stack: true (bars stacked on the bars of earlier stacked series; a chart has
//             one series of bars, or stacked ones)}],
//   hlines: [{name, label, y, color}],   // e.g. the skip threshold
//   yLabel, percent (y values are shares, shown as %),
//   xExtent: [first, last] x the axis spans at least (charts of one run line up) }
// Every data mark carries data-series, data-x and data-y with the exact numbers it shows
// (String(number) round-trips a double), so a test can read the chart back.
"use strict";

const Charts = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 560, HEIGHT = 250;
  const MARGIN = {left: 62, right: 14, top: 26, bottom: 34};
  const Y_TICKS = 5, MAX_X_LABELS = 10, BAR_FILL = 0.7, HEADROOM = 1.08;

  function el(name, attrs, parent, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function format(value, percent) {
    if (percent) return `${+(100 * value).toPrecision(3)}%`;
    if (value === 0) return "0";
    const size = Math.abs(value);
    if (size < 1e-3 || size >= 1e5) return value.toExponential(1);
    return String(+value.toPrecision(3));
  }

  function niceStep(span) {
    const raw = span / Y_TICKS;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const mult = [1, 2, 2.5, 5, 10].find((m) => m * power >= raw);
    return mult * power;
  }

  // [low, high] of the y axis: 0 included, every value (stack tops) and line shown.
  function yDomain(spec) {
    const values = [0];
    const tops = new Map();
    for (const s of spec.series) {
      for (const [x, y] of s.points) {
        if (s.stack) tops.set(x, (tops.get(x) || 0) + y);
        values.push(s.stack ? tops.get(x) : y);
      }
    }
    for (const line of spec.hlines || []) values.push(line.y);
    let low = Math.min(...values), high = Math.max(...values);
    if (high === low) high = low + 1;
    high = high > 0 ? high * HEADROOM : high;
    low = low < 0 ? low * HEADROOM : low;
    return [low, high];
  }

  function xDomain(spec) {
    const xs = [...spec.series.flatMap((s) => s.points.map(([x]) => x)),
                ...(spec.xExtent || [])];
    if (!xs.length) return [-0.5, 0.5];
    return [Math.min(...xs) - 0.5, Math.max(...xs) + 0.5];
  }

  function axes(svg, spec, sx, sy, yRange, xRange) {
    const [low, high] = yRange;
    const step = niceStep(high - low);
    for (let tick = Math.ceil(low / step) * step; tick <= high; tick += step) {
      const y = sy(tick);
      el("line", {x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y, y2: y, class: "gridline"}, svg);
      el("text", {x: MARGIN.left - 6, y: y + 4, class: "tick", "text-anchor": "end"}, svg,
         format(Math.abs(tick) < step / 1e6 ? 0 : tick, spec.percent));
    }
    const first = Math.ceil(xRange[0]), last = Math.floor(xRange[1]);
    const every = Math.max(1, Math.ceil((last - first + 1) / MAX_X_LABELS));
    for (let x = first; x <= last; x += every) {
      el("text", {x: sx(x), y: HEIGHT - MARGIN.bottom + 16, class: "tick",
                  "text-anchor": "middle"}, svg, String(x));
    }
    el("line", {x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(Math.max(low, 0)),
                y2: sy(Math.max(low, 0)), class: "axis"}, svg);
    el("text", {x: WIDTH - MARGIN.right, y: HEIGHT - 4, class: "label", "text-anchor": "end"},
       svg, "iteration");
    el("text", {x: 4, y: 14, class: "label"}, svg, spec.yLabel || "");
  }

  function legend(svg, spec) {
    let x = MARGIN.left + 150;
    for (const item of [...spec.series, ...(spec.hlines || [])]) {
      if (!item.label) continue;
      el("rect", {x, y: 6, width: 10, height: 10, fill: item.color}, svg);
      const text = el("text", {x: x + 14, y: 15, class: "legend"}, svg, item.label);
      x += 24 + text.getComputedTextLength();
    }
  }

  function mark(node, series, x, y, percent) {
    node.setAttribute("data-series", series.name);
    node.setAttribute("data-x", String(x));
    node.setAttribute("data-y", String(y));
    el("title", {}, node, `${series.label || series.name}, iteration ${x}: ${format(y, percent)}`);
    return node;
  }

  function drawSeries(svg, spec, sx, sy, slot) {
    const stacked = new Map();
    for (const s of spec.series) {
      if (s.kind === "bars") {
        for (const [x, y] of s.points) {
          const base = s.stack ? stacked.get(x) || 0 : 0;
          if (s.stack) stacked.set(x, base + y);
          const top = sy(base + y), bottom = sy(base);
          mark(el("rect", {x: sx(x) - slot / 2, width: slot, y: Math.min(top, bottom),
                           height: Math.abs(bottom - top), fill: s.color}, svg),
               s, x, y, spec.percent);
        }
        continue;
      }
      if (s.kind === "line" && s.points.length > 1) {
        const d = s.points.map(([x, y], i) => `${i ? "L" : "M"}${sx(x)},${sy(y)}`).join("");
        el("path", {d, fill: "none", stroke: s.color, "stroke-width": 1.5}, svg);
      }
      for (const [x, y] of s.points) {
        mark(el("circle", {cx: sx(x), cy: sy(y), r: s.kind === "line" ? 2.5 : 4,
                           fill: s.color}, svg), s, x, y, spec.percent);
      }
    }
  }

  function draw(svg, spec) {
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
    const xRange = xDomain(spec), yRange = yDomain(spec);
    const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
    const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
    const sx = (x) => MARGIN.left + ((x - xRange[0]) / (xRange[1] - xRange[0])) * plotWidth;
    const sy = (y) => MARGIN.top + ((yRange[1] - y) / (yRange[1] - yRange[0])) * plotHeight;
    axes(svg, spec, sx, sy, yRange, xRange);
    if (!spec.series.some((s) => s.points.length)) {
      el("text", {x: WIDTH / 2, y: HEIGHT / 2, class: "empty", "text-anchor": "middle"}, svg,
         spec.empty || "no data yet");
    }
    for (const line of spec.hlines || []) {
      const node = el("line", {x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(line.y),
                               y2: sy(line.y), stroke: line.color, class: "hline"}, svg);
      node.setAttribute("data-series", line.name);
      node.setAttribute("data-y", String(line.y));
      el("title", {}, node, `${line.label}: ${format(line.y, spec.percent)}`);
    }
    drawSeries(svg, spec, sx, sy, (BAR_FILL * plotWidth) / (xRange[1] - xRange[0]));
    legend(svg, spec);
  }

  return {draw, format};
})();
