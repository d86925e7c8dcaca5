/* vsr_async panel: renders the store's snapshot from server-sent events and sends commands.
 * No framework, no build step. The token (when the server needs one) is read from ?token= once,
 * kept in sessionStorage, sent as a Bearer header on fetch() and as ?token= where the browser
 * cannot send headers (EventSource, <img>, download links). */
(function () {
  "use strict";

  // --- token --------------------------------------------------------------------------------
  const TOKEN_KEY = "vsr_token";
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  const token = sessionStorage.getItem(TOKEN_KEY);

  function withToken(path) {
    if (!token) return path;
    const url = new URL(path, location.href);
    url.searchParams.set("token", token);
    return url.pathname + url.search;
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const error = new Error((data && data.error) || response.status + " " + response.statusText);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  // --- formatting ---------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  const DASH = "—";
  const num = (v) => typeof v === "number" && isFinite(v);
  const signed = (text, v) => (v > 0 ? "+" : "") + text;

  const FORMATS = {
    text: (v) => String(v),
    int: (v) => (num(v) ? Math.round(v).toLocaleString("en-US") : String(v)),
    pct: (v) => (v * 100).toFixed(2) + " %",
    pct1: (v) => (v * 100).toFixed(1) + " %",
    pctsigned: (v) => signed((v * 100).toFixed(2), v) + " %",
    sci: (v) => Number(v).toExponential(2),
    f2: (v) => Number(v).toFixed(2),
    f3: (v) => Number(v).toFixed(3),
    f4: (v) => Number(v).toFixed(4),
    f5: (v) => Number(v).toFixed(5),
    db: (v) => Number(v).toFixed(2) + " dB",
    dbsigned: (v) => signed(Number(v).toFixed(2), v) + " dB",
    gb: (v) => Number(v).toFixed(2) + " GB",
    sec: (v) => (v < 1 ? (v * 1000).toFixed(0) + " ms" : Number(v).toFixed(2) + " s"),
    bool: (v) => (v ? "yes" : "no"),
    time: (v) => {
      const d = new Date(v);
      return isNaN(d) ? String(v) : d.toLocaleTimeString();
    },
  };
  const SIGNED_FORMATS = new Set(["pctsigned", "dbsigned"]);

  function format(value, kind) {
    if (value === null || value === undefined || value === "") return DASH;
    const f = FORMATS[kind] || FORMATS.text;
    try {
      return f(value);
    } catch (e) {
      return String(value);
    }
  }

  const COMMAND_NAMES = {
    RunValidation: "validate",
    Pause: "pause",
    Resume: "resume",
    TogglePause: "pause/resume",
    SaveCheckpoint: "checkpoint",
    Stop: "stop",
    ApplyConfig: "config change",
  };

  // --- state --------------------------------------------------------------------------------
  const state = {
    snapshot: null,
    connected: false,
    everConnected: false,
    runStopped: false,
    validationCount: null,
    lastStatisticsWritten: null,
    knownFiles: new Set(),
    configKeys: [],
  };
  const charts = {
    loss: window.PanelCharts.lossChart($("chart-loss")),
    quality: window.PanelCharts.qualityChart($("chart-quality")),
  };

  // --- rendering ----------------------------------------------------------------------------
  function derived(snap) {
    return {
      progress_pct: snap.step_max ? snap.step_current / snap.step_max : null,
      it_per_s: num(snap.iteration_duration) && snap.iteration_duration > 0 ? 1 / snap.iteration_duration : null,
    };
  }

  function render(snap) {
    state.snapshot = snap;
    const extra = derived(snap);
    for (const el of document.querySelectorAll("[data-field]")) {
      const key = el.dataset.field;
      const value = key in extra ? extra[key] : snap[key];
      const kind = el.dataset.format;
      const text = format(value, kind);
      if (el.textContent !== text) el.textContent = text;
      if (SIGNED_FORMATS.has(kind)) {
        el.classList.toggle("good", num(value) && value > 0);
        el.classList.toggle("bad", num(value) && value < 0);
      }
    }
    $("progress-bar").style.width = ((extra.progress_pct || 0) * 100).toFixed(2) + "%";
    const validating = !!snap.validation_running;
    $("validation-bar").hidden = !validating;
    $("validation-bar-fill").style.width = ((snap.validation_progress || 0) * 100).toFixed(1) + "%";

    $("validation-meta").hidden = !snap.validation_count;
    $("no-validation").hidden = !!snap.validation_count;
    renderRunState(snap);
    renderActivity(snap.layer_activity_map || {});
    renderImageTable(snap.validation_images || []);
    renderJob(snap.world_size, snap.global_batch);
    renderRuntime(snap.runtime || {});
    renderTensorBoardLink(snap.tensorboard_port);
    renderConfigValues(snap.config_live || {});

    const errorText = snap.last_statistics_error;
    $("banner-statistics").hidden = !errorText;
    $("statistics-error").textContent = errorText || "";

    if (snap.validation_count !== state.validationCount) {
      state.validationCount = snap.validation_count;
      if (snap.validation_count > 0) refreshStrips();
    }
    if (snap.last_statistics_written !== state.lastStatisticsWritten) {
      state.lastStatisticsWritten = snap.last_statistics_written;
      refreshStatistics();
    }
  }

  function renderRunState(snap) {
    const pill = $("run-state");
    let label = "Starting";
    let kind = "idle";
    if (snap.training_stopped) {
      label = "Stopped";
      kind = "stopped";
    } else if (snap.validation_running) {
      label = "Validating " + Math.round((snap.validation_progress || 0) * 100) + " %";
      kind = "validating";
    } else if (snap.training_paused) {
      label = "Paused";
      kind = "paused";
    } else if (snap.training_active) {
      label = "Training";
      kind = "running";
    }
    pill.textContent = label;
    pill.className = "pill pill-" + kind;

    state.runStopped = !!snap.training_stopped;
    $("banner-stopped").hidden = !state.runStopped;
    $("stop-reason").textContent = snap.stop_reason ? "(" + snap.stop_reason + ")" : "";
    if (state.runStopped) $("banner-connection").hidden = true;

    const pauseButton = $("btn-pause");
    const paused = !!snap.training_paused;
    pauseButton.textContent = paused ? "Resume" : "Pause";
    pauseButton.dataset.action = paused ? "resume" : "pause";
    for (const id of ["btn-validate", "btn-pause", "btn-checkpoint", "btn-stop"]) {
      $(id).disabled = state.runStopped;
    }
    const pending = (snap.pending_commands || []).map((n) => COMMAND_NAMES[n] || n);
    $("pending").textContent = pending.length ? "queued: " + pending.join(", ") : "";
  }

  // TensorBoard (--tensorboard) listens on the panel's host: link to the name this page was
  // opened with (location.hostname keeps an IPv6 address's brackets).
  function renderTensorBoardLink(port) {
    const link = $("tensorboard-link");
    link.hidden = !num(port);
    const href = num(port) ? "http://" + location.hostname + ":" + port + "/" : "";
    if (href && link.getAttribute("href") !== href) link.setAttribute("href", href);
  }

  function renderActivity(map) {
    const box = $("activity");
    const entries = Object.entries(map).filter(([, v]) => num(v));
    if (!entries.length) {
      if (!box.querySelector(".muted")) box.innerHTML = '<p class="muted">' + DASH + "</p>";
      return;
    }
    const max = Math.max(...entries.map(([, v]) => v), 1e-12);
    const rows = new Map([...box.querySelectorAll(".activity-row")].map((r) => [r.dataset.layer, r]));
    if (rows.size !== entries.length || entries.some(([k]) => !rows.has(k))) {
      box.replaceChildren();
      rows.clear();
      for (const [layer] of entries) {
        const row = document.createElement("div");
        row.className = "activity-row";
        row.dataset.layer = layer;
        const kind = layer.startsWith("Backward") ? "backward" : layer.startsWith("Forward") ? "forward" : "fusion";
        row.innerHTML =
          '<span class="activity-name"></span><div class="activity-track"><div class="activity-fill ' +
          kind +
          '"></div></div><span class="activity-value"></span>';
        row.querySelector(".activity-name").textContent = layer;
        row.querySelector(".activity-name").title = layer;
        box.appendChild(row);
        rows.set(layer, row);
      }
    }
    for (const [layer, value] of entries) {
      const row = rows.get(layer);
      row.querySelector(".activity-fill").style.width = ((value / max) * 100).toFixed(1) + "%";
      row.querySelector(".activity-value").textContent = value.toFixed(4);
    }
  }

  function renderImageTable(images) {
    const table = $("image-table");
    table.hidden = !images.length;
    const body = $("image-rows");
    const key = JSON.stringify(images);
    if (body.dataset.key === key) return;
    body.dataset.key = key;
    body.replaceChildren();
    for (const m of images) {
      const tr = document.createElement("tr");
      const cells = [
        [m.name, "text"],
        [m.psnr_lr_db, "db"],
        [m.psnr_ki_db, "db"],
        [m.ssim_lr, "f4"],
        [m.ssim_ki, "f4"],
        [m.quality_lr, "pct"],
        [m.quality_ki, "pct"],
      ];
      cells.forEach(([v, kind], i) => {
        const td = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) td.scope = "row";
        else td.className = "num";
        td.textContent = format(v, kind);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
  }

  // The job's shape: the rank count only for a torchrun job of several ranks (then also in the
  // top bar), the global batch (the samples of one optimizer step) always.
  function renderJob(ranks, globalBatch) {
    const several = num(ranks) && ranks > 1;
    const batch = "global batch " + format(globalBatch, "int");
    const text = several ? "ranks " + ranks + " · " + batch : batch;
    if ($("job").textContent !== text) $("job").textContent = text;
    const pill = $("ranks");
    pill.hidden = !several;
    pill.textContent = several ? ranks + " ranks" : "";
  }

  function renderRuntime(runtime) {
    const box = $("runtime-extra");
    const key = JSON.stringify(runtime);
    if (box.dataset.key === key) return;
    box.dataset.key = key;
    box.replaceChildren();
    for (const [name, value] of Object.entries(runtime)) {
      const div = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name.replace(/_/g, " ");
      dd.textContent = typeof value === "object" && value !== null ? JSON.stringify(value) : format(value, "text");
      div.append(dt, dd);
      box.appendChild(div);
    }
  }

  // --- strips and Statistik files -----------------------------------------------------------
  async function refreshStrips() {
    let info;
    try {
      info = await api("GET", "/api/validation/images");
    } catch (e) {
      return;
    }
    const box = $("strips");
    if (!info.images.length) return;
    box.replaceChildren();
    for (const strip of info.images) {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.alt = "validation image " + strip.name + ": bicubic, output and ground truth";
      img.width = strip.width;
      img.height = strip.height;
      img.loading = "lazy";
      img.src = withToken(strip.url + "?v=" + info.validation_count);
      const caption = document.createElement("figcaption");
      const name = document.createElement("span");
      name.textContent = strip.name;
      const step = document.createElement("span");
      step.textContent = "step " + format(info.validation_step, "int");
      caption.append(name, step);
      figure.append(img, caption);
      box.appendChild(figure);
    }
  }

  async function refreshStatistics() {
    let listing;
    try {
      listing = await api("GET", "/api/statistics");
    } catch (e) {
      return;
    }
    const body = $("statistics-list");
    body.replaceChildren();
    if (!listing.files.length) {
      body.innerHTML = '<tr><td colspan="4" class="muted">None yet.</td></tr>';
      return;
    }
    const firstLoad = state.knownFiles.size === 0;
    for (const file of [...listing.files].reverse()) {
      const tr = document.createElement("tr");
      const key = file.name + "@" + file.modified;
      if (!firstLoad && !state.knownFiles.has(key)) tr.className = "fresh";
      state.knownFiles.add(key);
      const link = document.createElement("a");
      link.href = withToken(file.url);
      link.download = file.name;
      link.textContent = file.name;
      const cells = [link, format(file.step, "int"), (file.size_bytes / 1024).toFixed(1) + " KiB", format(file.modified, "time")];
      cells.forEach((content, i) => {
        const td = document.createElement("td");
        if (i === 1 || i === 2) td.className = "num";
        if (typeof content === "string") td.textContent = content;
        else td.appendChild(content);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
  }

  // --- live configuration -------------------------------------------------------------------
  async function loadConfig() {
    let info;
    try {
      info = await api("GET", "/api/config");
    } catch (e) {
      return;
    }
    state.configKeys = info.keys;
    const box = $("config-fields");
    box.replaceChildren();
    for (const k of info.keys) {
      const field = document.createElement("div");
      field.className = "config-field";
      const id = "cfg-" + k.key;
      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = k.key;
      const input = document.createElement("input");
      input.id = id;
      input.name = k.key;
      input.type = "number";
      input.step = "any";
      input.inputMode = k.type === "integer" ? "numeric" : "decimal";
      if (k.minimum != null) input.min = k.minimum;
      if (k.maximum != null) input.max = k.maximum;
      input.value = k.value;
      input.dataset.live = String(k.value);
      input.title = k.description || "";
      input.addEventListener("input", () => {
        input.classList.toggle("changed", input.value !== input.dataset.live);
        input.classList.remove("invalid");
      });
      const hint = document.createElement("div");
      hint.className = "hint";
      hint.textContent = rangeText(k) + (k.description ? " · " + k.description : "");
      hint.title = k.description || "";
      field.append(label, input, hint);
      box.appendChild(field);
    }
  }

  function rangeText(k) {
    const kind = k.type === "integer" ? "integer" : "number";
    if (k.minimum != null && k.maximum != null) return kind + " in [" + k.minimum + ", " + k.maximum + "]";
    return kind;
  }

  function renderConfigValues(live) {
    for (const [key, value] of Object.entries(live)) {
      const input = $("cfg-" + key);
      if (!input) continue;
      const text = String(value);
      if (input.dataset.live === text) continue;
      input.dataset.live = text;
      if (document.activeElement !== input && !input.classList.contains("changed")) input.value = text;
      input.classList.toggle("changed", input.value !== text);
    }
  }

  async function submitConfig(event) {
    event.preventDefault();
    const message = $("config-message");
    const changes = {};
    for (const k of state.configKeys) {
      const input = $("cfg-" + k.key);
      if (!input || input.value === input.dataset.live || input.value.trim() === "") continue;
      const value = Number(input.value);
      changes[k.key] = Number.isFinite(value) ? value : input.value;
    }
    if (!Object.keys(changes).length) {
      message.className = "small";
      message.textContent = "Nothing changed.";
      return;
    }
    try {
      const result = await api("PATCH", "/api/config", changes);
      message.className = "small ok";
      message.textContent =
        "Queued: " +
        Object.entries(result.changes)
          .map(([k, v]) => k + " = " + v)
          .join(", ") +
        " (applies at the next step)";
      for (const key of Object.keys(changes)) $("cfg-" + key).classList.remove("changed");
    } catch (e) {
      message.className = "small error";
      message.textContent = e.message;
      for (const key of Object.keys(changes)) {
        if (e.message.includes(key)) $("cfg-" + key).classList.add("invalid");
      }
    }
  }

  // --- log and toasts -----------------------------------------------------------------------
  function appendLog(line) {
    const list = $("log");
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    const li = document.createElement("li");
    li.className = "lvl-" + line.level;
    const time = document.createElement("time");
    time.textContent = new Date(line.time * 1000).toLocaleTimeString();
    li.append(time, document.createTextNode(line.message));
    list.appendChild(li);
    while (list.children.length > 300) list.removeChild(list.firstChild);
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  let toastTimer = null;
  function toast(text, isError) {
    const box = $("toast");
    box.textContent = text;
    box.className = "toast" + (isError ? " error" : "");
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (box.hidden = true), isError ? 8000 : 4000);
  }

  // --- connection ---------------------------------------------------------------------------
  function setConnection(kind) {
    const pill = $("connection");
    const labels = { live: "live", lost: "connection lost", connecting: "connecting", offline: "offline" };
    pill.textContent = labels[kind];
    pill.className = "pill pill-" + (kind === "live" ? "live" : kind === "connecting" ? "idle" : "lost");
    state.connected = kind === "live";
    $("banner-connection").hidden = !(kind === "lost" && !state.runStopped);
    const runState = $("run-state");
    if (!state.connected && state.runStopped) {
      pill.textContent = "offline";
      runState.textContent = "Stopped";
      runState.className = "pill pill-stopped";
    } else if (kind === "lost" && state.snapshot && !runState.textContent.startsWith("last seen")) {
      runState.textContent = "last seen: " + runState.textContent;
      runState.className = "pill pill-idle";
    }
    if (!state.connected) {
      $("run-state").setAttribute("aria-busy", "true");
    } else {
      $("run-state").removeAttribute("aria-busy");
    }
  }

  let source = null;
  let retryTimer = null;

  function connect() {
    clearTimeout(retryTimer);
    if (source) source.close();
    setConnection(state.everConnected ? "lost" : "connecting");
    source = new EventSource(withToken("/api/events"));
    source.addEventListener("open", () => {
      const reconnected = state.everConnected;
      state.everConnected = true;
      setConnection("live");
      if (reconnected) {
        refreshStatistics();
        loadConfig();
        state.validationCount = null; // strips are fetched again by the next snapshot
      }
    });
    source.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
    source.addEventListener("history", (e) => {
      const h = JSON.parse(e.data);
      if (h.reset) {
        charts.loss.reset(h.loss);
        charts.quality.reset(h.quality);
      } else {
        charts.loss.append(h.loss);
        charts.quality.append(h.quality);
      }
    });
    source.addEventListener("log", (e) => appendLog(JSON.parse(e.data)));
    source.addEventListener("command", (e) => {
      const c = JSON.parse(e.data);
      if (c.status === "failed") toast(c.command + " failed: " + c.error, true);
      else if (c.status === "done") toast(c.command + ": " + describeResult(c.result));
    });
    source.addEventListener("validation", (e) => {
      const r = JSON.parse(e.data);
      if (r.status === "done") {
        const q = r.metrics && num(r.metrics.quality_ki_value) ? " · output quality " + format(r.metrics.quality_ki_value, "pct") : "";
        toast("Validation at step " + r.step + " → " + (r.statistics_file || "file not written") + q, !r.statistics_file);
      } else if (r.status === "failed") {
        toast("Validation failed: " + (r.error || "unknown error"), true);
      }
      refreshStatistics();
    });
    source.addEventListener("stopped", (e) => {
      state.runStopped = true;
      const reason = JSON.parse(e.data).reason;
      $("banner-stopped").hidden = false;
      $("stop-reason").textContent = reason ? "(" + reason + ")" : "";
    });
    source.addEventListener("error", () => {
      setConnection(state.runStopped ? "offline" : state.everConnected ? "lost" : "connecting");
      if (source.readyState === EventSource.CLOSED) {
        // The server answered with an error (or is gone for good): try again ourselves.
        retryTimer = setTimeout(connect, state.runStopped ? 10000 : 3000);
      }
    });
  }

  function describeResult(result) {
    if (result == null) return "done";
    if (typeof result === "object") {
      return Object.entries(result)
        .map(([k, v]) => k + " = " + v)
        .join(", ");
    }
    return String(result);
  }

  // --- controls -----------------------------------------------------------------------------
  async function command(path, label) {
    try {
      const result = await api("POST", path);
      toast(label + " queued" + (result && result.request_id ? " (request " + result.request_id.slice(0, 8) + ")" : ""));
      return result;
    } catch (e) {
      toast(label + ": " + e.message, true);
      return null;
    }
  }

  $("btn-validate").addEventListener("click", () => command("/validate", "Validation"));
  $("btn-pause").addEventListener("click", (e) => {
    const action = e.currentTarget.dataset.action === "resume" ? "resume" : "pause";
    command("/" + action, action === "resume" ? "Resume" : "Pause");
  });
  $("btn-checkpoint").addEventListener("click", () => command("/checkpoint", "Checkpoint"));
  $("btn-stop").addEventListener("click", () => {
    const ok = window.confirm(
      "Stop the training run?\n\nThe current step finishes, a final checkpoint and the pending " +
        "Statistik files are written, then the process exits."
    );
    if (ok) command("/stop", "Stop");
  });
  $("btn-download").addEventListener("click", () => {
    const link = document.createElement("a");
    link.href = withToken("/api/snapshot/download");
    const step = state.snapshot ? state.snapshot.step_current : "current";
    link.download = "Statistik_" + step + ".json";
    document.body.appendChild(link);
    link.click();
    link.remove();
  });
  $("config-form").addEventListener("submit", submitConfig);

  loadConfig();
  refreshStatistics();
  connect();
})();
