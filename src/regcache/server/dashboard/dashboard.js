// regcache operator dashboard: reads the admin API with the token kept in sessionStorage.
"use strict";
(() => {
  const KEY = "regcache-admin-token";
  const REFRESH_MS = 5000;
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem(KEY);
  let images = [];
  let timer = null;
  let running = null;
  let shownImages = "";
  let noticeTimer = null;

  // ---- helpers -------------------------------------------------------------------------------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }

  function bytes(n) { // as regcache.units.format_size
    if (n === null || n === undefined) return "–";
    let value = Number(n);
    for (const unit of ["B", "KiB", "MiB", "GiB"]) {
      if (Math.abs(value) < 1024) return unit === "B" ? `${value.toFixed(0)} B` : `${value.toFixed(1)} ${unit}`;
      value /= 1024;
    }
    return `${value.toFixed(1)} TiB`;
  }
  const count = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"));
  const percent = (r) => `${(100 * r).toFixed(1)} %`;
  const short = (digest) => (digest || "").replace(/^(sha\d+:)?(.{12}).*$/, "$2");
  const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");

  function ago(t) {
    if (!t) return "never";
    const s = Date.now() / 1000 - t;
    if (s < 60) return "just now";
    for (const [unit, length] of [["d", 86400], ["h", 3600], ["min", 60]]) {
      if (s >= length) return `${Math.floor(s / length)} ${unit} ago`;
    }
    return "just now";
  }

  function setText(id, text, value) {
    const node = $(id);
    node.textContent = text;
    if (value !== undefined) node.dataset.value = String(value);
  }

  function bar(fraction, label) {
    const fill = el("div");
    fill.style.width = `${Math.max(0, Math.min(100, 100 * fraction))}%`;
    return el("div", { class: "bar", role: "progressbar", "aria-label": label,
      "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(100 * fraction) }, fill);
  }

  function fill(id, items, render, empty) {
    const list = $(id);
    list.replaceChildren(...(items.length ? items.map(render) : [el("li", { class: "empty", text: empty })]));
  }

  // ---- the API -------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(new URL(`../admin/${path}`, location.href), {
        method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new ApiError(0, `regcache cannot be reached (${error.message})`);
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: said below */ }
    if (!response.ok) {
      const errors = data && Array.isArray(data.errors) ? data.errors : [];
      const words = errors.map((e) => (e.message ? `${e.message} (${e.code})` : e.code)).join("; ");
      throw new ApiError(response.status, words || `HTTP ${response.status} ${response.statusText}`.trim());
    }
    if (data === null) throw new ApiError(response.status, "regcache answered without JSON");
    return data;
  }

  // ---- rendering -----------------------------------------------------------------------------
  function renderOverview(o) {
    const s = o.storage;
    const t = o.traffic;
    setText("storage-used", bytes(s.used), s.used);
    setText("storage-quota", bytes(s.quota), s.quota);
    const used = s.quota ? s.used / s.quota : 0;
    const storageBar = document.querySelector("[data-testid=storage-bar]");
    $("storage-fill").style.width = `${Math.min(100, 100 * used)}%`;
    $("storage-reserved").style.left = `${Math.min(100, 100 * used)}%`;
    $("storage-reserved").style.width = `${Math.min(100, s.quota ? (100 * s.reserved) / s.quota : 0)}%`;
    storageBar.setAttribute("aria-valuenow", Math.round(100 * used));
    storageBar.classList.toggle("warn", used > 0.8 && used <= 0.95);
    storageBar.classList.toggle("bad", used > 0.95);
    setText("free-disk", bytes(s.free_disk), s.free_disk);
    setText("min-free", bytes(s.min_free), s.min_free);
    setText("reserved", bytes(s.reserved), s.reserved);
    setText("blobs", count(s.blobs), s.blobs);
    setText("evictions", count(s.evictions), s.evictions);
    setText("hit-ratio", percent(t.hit_ratio), t.hit_ratio);
    setText("bytes-saved", bytes(t.bytes_from_cache), t.bytes_from_cache);
    setText("bytes-upstream", bytes(t.bytes_from_upstream), t.bytes_from_upstream);
    for (const key of ["hits", "misses", "stale", "joined"]) setText(key, count(t[key]), t[key]);

    fill("upstreams", o.upstreams, (u) => {
      const r = u.ratelimit || {};
      const known = r.limit !== null && r.limit !== undefined && r.remaining !== null && r.remaining !== undefined;
      const detail = [u.prefix, u.mirror ? "mirror" : null, `credential: ${u.credential || "anonymous"}`];
      if (r.window_seconds) detail.push(`per ${Math.round(r.window_seconds / 3600)} h`);
      if (r.source) detail.push(`source ${r.source}`);
      if (r.updated) detail.push(`seen ${ago(r.updated)}`);
      return el("li", { "data-testid": "upstream-row", "data-name": u.name },
        el("strong", { class: "name", text: u.name }),
        el("span", { class: "right", "data-testid": "upstream-budget",
          text: known ? `${count(r.remaining)} / ${count(r.limit)} left` : "no limit reported" }),
        el("div", { class: "full muted small", text: detail.filter(Boolean).join(" · ") }),
        known ? bar(r.limit ? r.remaining / r.limit : 0, `${u.name} budget left`) : null);
    }, "No upstream configured");

    fill("downloads", o.downloads, (d) => el("li", { "data-testid": "download-row", "data-digest": d.digest },
      el("span", { class: "name mono", title: d.digest, text: short(d.digest) }),
      el("span", { class: "right", text: `${bytes(d.written)} / ${bytes(d.size)} · ${count(d.readers)} reading` }),
      bar(d.size ? d.written / d.size : 0, "downloaded")), "None");

    fill("recent-errors", o.recent_errors, (e) => el("li", { "data-testid": "error-row", "data-status": e.status ?? "" },
      el("span", { class: "name" },
        el("span", { class: `badge${e.status === 429 || !e.status || e.status >= 500 ? " bad" : ""}`,
          text: e.status === 429 ? "429 rate limited" : e.status ? String(e.status) : "no response" }),
        " ", el("strong", { text: e.upstream }), " ", e.message),
      el("span", { class: "right muted", title: when(e.time), text: ago(e.time) })), "No upstream errors");

    const name = (i) => (i.tags.length ? `${i.repository}:${i.tags[0]}` : `${i.repository}@${short(i.digest)}`);
    fill("top-pulls", o.top_by_pulls, (i) => el("li", { "data-testid": "top-pulls-row", "data-repository": i.repository },
      el("span", { class: "name", text: name(i) }),
      el("span", { class: "right", text: `${count(i.pulls)} ${i.pulls === 1 ? "pull" : "pulls"}` })), "No images");
    fill("top-size", o.top_by_size, (i) => el("li", { "data-testid": "top-size-row", "data-repository": i.repository },
      el("span", { class: "name", text: name(i) }), el("span", { class: "right", text: bytes(i.size) })), "No images");
  }

  function matcher(query) {
    const q = query.trim().toLowerCase();
    if (!q) return () => true;
    if (/[*?]/.test(q)) {
      const re = new RegExp(`^${q.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".")}$`);
      return (s) => re.test(s);
    }
    return (s) => s.includes(q);
  }

  function renderImages(force) {
    const match = matcher($("filter").value);
    const shown = images.filter((i) =>
      [i.repository, i.digest, ...i.tags.map((t) => `${i.repository}:${t}`)].some((s) => match(s.toLowerCase())));
    const key = JSON.stringify([shown, Math.floor(Date.now() / 60000)]);
    if (key === shownImages && !force) return;
    shownImages = key;
    $("image-count").textContent = shown.length === images.length ? `(${images.length})` : `(${shown.length} of ${images.length})`;
    const rows = shown.map((i) => el("tr", { "data-testid": "image-row", "data-repository": i.repository,
      "data-digest": i.digest, "data-pinned": String(i.pinned) },
    el("td", { class: "repo", "data-label": "Repository", text: i.repository }),
    el("td", { "data-label": "Tags", text: i.tags.length ? i.tags.join(", ") : "untagged" }),
    el("td", { "data-label": "Digest" }, el("span", { class: "mono", title: i.digest, text: short(i.digest) })),
    el("td", { class: "num", "data-label": "Size", text: bytes(i.size) }),
    el("td", { class: "num", "data-label": "Pulls", text: count(i.pulls) }),
    el("td", { "data-label": "Last pull", title: when(i.last_pull), text: ago(i.last_pull) }),
    el("td", { "data-label": "Origin" }, el("span", { class: "badge", text: i.origin }), " ",
      i.pinned ? el("span", { class: "badge pin", "data-testid": "pinned-badge", text: "pinned" }) : null),
    el("td", { class: "actions" },
      el("button", { type: "button", "data-testid": i.pinned ? "unpin-button" : "pin-button",
        onclick: (ev) => pin(ev.currentTarget, i, !i.pinned), text: i.pinned ? "Unpin" : "Pin" }),
      el("button", { type: "button", class: "danger", "data-testid": "delete-button",
        "aria-label": `Delete ${i.repository}@${short(i.digest)}`, onclick: (ev) => remove(ev.currentTarget, i), text: "Delete" }))));
    if (!rows.length) {
      rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted", text: images.length ? "No image matches the filter" : "No images cached yet" })));
    }
    $("images").replaceChildren(...rows);
  }

  // ---- refresh, actions, sign-in -------------------------------------------------------------
  function refresh() {
    if (running) return running.then(() => refresh());
    clearTimeout(timer);
    running = (async () => {
      try {
        const [overview, list] = await Promise.all([api("GET", "overview"), api("GET", "images")]);
        images = list.images || [];
        renderOverview(overview);
        renderImages();
        $("error").hidden = true;
        $("status").textContent = `Updated ${new Date().toLocaleTimeString()}`;
        document.body.dataset.loaded = "true";
      } catch (error) {
        if (error.status === 401) return signOut(`The admin token was refused: ${error.message}`);
        $("error").textContent = `Could not update: ${error.message}`;
        $("error").hidden = false;
        $("status").textContent = `Update failed ${new Date().toLocaleTimeString()}`;
      } finally {
        running = null;
      }
      if (token) timer = setTimeout(refresh, REFRESH_MS);
    })();
    return running;
  }

  function notice(text, bad) {
    const node = $("notice");
    node.textContent = text;
    node.className = bad ? "alert" : "notice";
    node.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { node.hidden = true; }, 15000);
  }

  async function act(button, what, run, done) {
    if (button) button.disabled = true;
    try {
      notice(done(await run()));
    } catch (error) {
      if (error.status === 401) return signOut(`The admin token was refused: ${error.message}`);
      notice(`${what} failed: ${error.message}`, true);
      if (button) button.disabled = false;
    }
    await refresh();
  }

  function pin(button, image, pinned) {
    const body = { repository: image.repository, ref: image.digest };
    const name = `${image.repository}@${short(image.digest)}`;
    act(button, pinned ? "Pin" : "Unpin", () => api("POST", pinned ? "pin" : "unpin", body),
      () => `${pinned ? "Pinned" : "Unpinned"} ${name}`);
  }

  function remove(button, image) {
    const name = `${image.repository}@${short(image.digest)}`;
    if (!confirm(`Delete ${name} (${bytes(image.size)}) from the cache?`)) return;
    const query = new URLSearchParams({ repository: image.repository, ref: image.digest });
    act(button, "Delete", () => api("DELETE", `images?${query}`), (r) => `Deleted ${name}, freed ${bytes(r.freed)}`);
  }

  const SIZES = { "": 1, b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
    kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4 };
  const DURATIONS = { "": 1, s: 1, m: 60, h: 3600, d: 86400, w: 604800 };

  function parse(text, units) {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
    const unit = m && units[m[2].toLowerCase()];
    return unit ? Number(m[1]) * unit : null;
  }

  function prune(event) {
    event.preventDefault();
    const kind = $("prune-kind").value;
    const text = $("prune-value").value.trim();
    const body = {};
    if (kind === "pattern") body.pattern = text;
    else if (kind === "older_than") body.older_than = parse(text, DURATIONS);
    else body.down_to = Math.floor(parse(text, SIZES) ?? NaN);
    if (!text || body[kind] === null || Number.isNaN(body[kind])) {
      return notice(kind === "pattern" ? "Give a glob pattern" : kind === "older_than"
        ? `Not a duration: "${text}" (try 7d, 12h, 30m or 3600)` : `Not a size: "${text}" (try 2GiB, 500MB or bytes)`, true);
    }
    if ($("prune-dry").checked) body.dry_run = true;
    else if (!confirm("Prune the cached images this matches? Evicted images are downloaded again on the next pull.")) return;
    act(event.submitter, "Prune", () => api("POST", "prune", body), (r) => (r.dry_run
      ? `Would prune ${r.evicted} image(s)${r.images.length ? `: ${r.images.join(", ")}` : ""}`
      : `Pruned ${r.evicted} image(s), freed ${bytes(r.freed)}`));
  }

  function signOut(message) {
    clearTimeout(timer);
    token = null;
    sessionStorage.removeItem(KEY);
    $("dash").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("status").textContent = "";
    $("error").textContent = message || "";
    $("error").hidden = !message;
    $("token").focus();
  }

  function start() {
    $("login").hidden = true;
    $("dash").hidden = false;
    $("logout").hidden = false;
    shownImages = "";
    refresh();
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    if (!token) return;
    sessionStorage.setItem(KEY, token);
    start();
  });
  $("logout").addEventListener("click", () => signOut());
  $("filter").addEventListener("input", () => renderImages(true));
  $("prune").addEventListener("submit", prune);
  if (token) start();
  else signOut();
})();
