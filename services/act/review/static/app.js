// ACT review UI. Item content is data: it is put in the page with textContent and element
// properties only, never parsed as markup.
"use strict";

(function () {
  const TOKEN_KEY = "act-review-token";
  const LEASE_SECONDS = 600;
  const EMPTY_RETRY_MS = 15000;

  const $ = (id) => document.getElementById(id);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    item: null,
    busy: false,
    // The reviewer's latest review ({item, revision, label}), which "z" reopens to change it;
    // while it is open (correcting), the claimed item waits in held.
    last: null,
    correcting: false,
    held: null,
    reviewed: 0,
    retryTimer: null,
    leaseTimer: null,
  };

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const options = {
      method,
      headers: { Authorization: "Bearer " + state.token },
      cache: "no-store",
    };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw new ApiError(0, "NETWORK", "cannot reach the server: " + err.message);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(
        response.status,
        error.code || "HTTP_" + response.status,
        error.message || response.statusText || "request failed",
      );
    }
    return data;
  }

  // ------------------------------------------------------------------ banner

  function showBanner(message, kind) {
    $("banner-text").textContent = message;
    $("banner").className = kind === "info" ? "info" : "";
    $("banner").hidden = false;
  }

  function hideBanner() {
    $("banner").hidden = true;
  }

  // ------------------------------------------------------------------ views

  function showLogin(message) {
    state.token = "";
    state.item = null;
    state.last = null;
    state.correcting = false;
    state.held = null;
    $("undo").hidden = true;
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimers();
    $("who").hidden = true;
    $("workspace").hidden = true;
    $("login").hidden = false;
    $("token").value = "";
    $("token").focus();
    if (message) showBanner(message);
  }

  function clearTimers() {
    if (state.retryTimer) clearTimeout(state.retryTimer);
    if (state.leaseTimer) clearInterval(state.leaseTimer);
    state.retryTimer = null;
    state.leaseTimer = null;
  }

  function handleError(err) {
    if (err.status === 401) {
      showLogin("Your token was refused: " + err.message);
      return;
    }
    showBanner(err.message + (err.code ? " (" + err.code + ")" : ""));
  }

  function renderStats(stats) {
    $("stat-pending").textContent = String(stats.pending);
    $("stat-claimed").textContent = String(stats.claimed);
    $("stat-reviewed").textContent = String(stats.reviewed);
    $("stat-selected").textContent = String(stats.selected);
    $("progress-bar").max = Math.max(stats.selected, 1);
    $("progress-bar").value = stats.reviewed;
  }

  async function refreshStats() {
    try {
      renderStats(await api("GET", "/api/stats"));
    } catch (err) {
      handleError(err);
    }
  }

  function renderLease() {
    const item = state.item;
    if (!item) return;
    const left = Math.round((Date.parse(item.lease_expires_at) - Date.now()) / 1000);
    if (left <= 0) {
      $("lease").textContent = "Lease expired";
    } else {
      const m = Math.floor(left / 60);
      const s = String(left % 60).padStart(2, "0");
      $("lease").textContent = "Lease: " + m + ":" + s + " left";
    }
  }

  // The item claimed for review, or (correction) the last reviewed one, to change its label.
  function renderItem(item, correction) {
    state.item = item;
    $("empty").hidden = true;
    $("item").hidden = false;
    $("item-id").textContent = item.item_id;
    $("correction").hidden = !correction;
    $("correction-was").textContent = correction ? describeLabel(state.last) : "";
    $("skip").hidden = Boolean(correction);

    const machine = item.machine_label;
    $("machine").hidden = machine === undefined || machine === null;
    $("machine-label").textContent = machine || "";

    const guidelines = item.schema.instructions || "";
    $("guidelines").textContent = guidelines || "(no guidelines)";
    $("guidelines-box").hidden = !guidelines;

    $("question").hidden = !item.question;
    $("question").textContent = item.question || "";

    $("text").textContent = item.text || "";
    $("text").hidden = !item.text;

    const images = $("images");
    images.replaceChildren();
    for (const image of item.images || []) {
      if (image.src && image.src.startsWith("data:image/")) {
        const img = document.createElement("img");
        img.src = image.src;
        img.alt = "item image";
        images.appendChild(img);
      } else if (image.uri) {
        const p = document.createElement("p");
        p.textContent = "External image (not loaded): " + image.uri;
        images.appendChild(p);
      }
    }

    const labels = $("labels");
    labels.replaceChildren();
    item.schema.labels.forEach((label, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.label = label.name;
      if (index < 9) {
        const key = document.createElement("kbd");
        key.textContent = String(index + 1);
        button.appendChild(key);
        button.appendChild(document.createTextNode(" "));
      }
      const name = document.createElement("strong");
      name.textContent = label.name;
      button.appendChild(name);
      if (label.description) {
        const desc = document.createElement("span");
        desc.className = "desc";
        desc.textContent = label.description;
        button.appendChild(desc);
      }
      button.addEventListener("click", () => submit(label.name));
      labels.appendChild(button);
    });
    if (!item.schema.registered) {
      showBanner(
        "The labels of schema " + item.schema.schema_id + " are not registered on the server; " +
          "skip this item and tell an administrator.",
      );
    }

    setUnsure(false);
    $("note").value = "";
    if (state.leaseTimer) clearInterval(state.leaseTimer);
    state.leaseTimer = null;
    if (correction) {
      $("lease").textContent = "Reviewed (revision " + state.last.revision + ")";
    } else {
      renderLease();
      state.leaseTimer = setInterval(renderLease, 1000);
    }
  }

  function describeLabel(review) {
    if (review.label) return review.label + (review.unsure ? ", unsure" : "");
    return "unsure, no label";
  }

  function renderEmpty() {
    state.item = null;
    $("item").hidden = true;
    $("empty").hidden = false;
    if (state.leaseTimer) clearInterval(state.leaseTimer);
    state.leaseTimer = null;
    if (state.retryTimer) clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(next, EMPTY_RETRY_MS);
  }

  function setUnsure(on) {
    $("unsure").checked = on;
    $("unsure").parentElement.classList.toggle("on", on);
    $("unsure-submit").hidden = !on;
  }

  function setBusy(busy) {
    state.busy = busy;
    for (const button of document.querySelectorAll("#item button")) button.disabled = busy;
  }

  // ------------------------------------------------------------------ actions

  async function next() {
    if (state.retryTimer) clearTimeout(state.retryTimer);
    state.retryTimer = null;
    try {
      const data = await api("POST", "/api/claim", { max_items: 1, lease_seconds: LEASE_SECONDS });
      if (data.items.length) renderItem(data.items[0]);
      else renderEmpty();
    } catch (err) {
      handleError(err);
      if (err.status !== 401) renderEmpty();
    }
    refreshStats();
  }

  async function submit(label) {
    const item = state.item;
    if (!item || state.busy) return;
    const correcting = state.correcting;
    const body = { label: label, unsure: $("unsure").checked, note: $("note").value };
    // A first review needs the claim; a change of one the revision it changes.
    if (correcting) body.expected_revision = state.last.revision;
    else body.claim_id = item.claim_id;
    setBusy(true);
    try {
      const data = await api(
        "POST",
        "/api/items/" + encodeURIComponent(item.item_id) + "/review",
        body,
      );
      state.last = {
        item: item,
        revision: data.review.revision,
        label: data.review.label,
        unsure: data.review.unsure,
      };
      $("undo").hidden = false;
      if (!correcting) {
        state.reviewed += 1;
        $("session-count").textContent = String(state.reviewed);
      }
      hideBanner();
    } catch (err) {
      handleError(err);
      if (err.status === 401) return;
      // Fix the input and try again on the same item; a changed label stays open too (Esc
      // leaves it).
      if (err.status === 422 || correcting) return;
    } finally {
      setBusy(false);
    }
    if (correcting) {
      leaveCorrection();
      refreshStats();
    } else {
      await next();
    }
  }

  // Reopens the last reviewed item to change its label; the claimed item waits.
  function startCorrection() {
    if (!state.last || state.busy || state.correcting) return;
    if (state.retryTimer) clearTimeout(state.retryTimer);
    state.retryTimer = null;
    state.held = $("item").hidden ? null : state.item;
    state.correcting = true;
    renderItem(state.last.item, true);
  }

  function leaveCorrection() {
    if (!state.correcting) return;
    state.correcting = false;
    const held = state.held;
    state.held = null;
    if (held) renderItem(held, false);
    else renderEmpty();
  }

  // The item this reviewer holds a claim on (the waiting one while correcting), if any.
  function claimedItem() {
    return state.correcting ? state.held : state.item;
  }

  async function skip() {
    const item = state.item;
    if (!item || state.busy || state.correcting) return;
    setBusy(true);
    try {
      await api("POST", "/api/items/" + encodeURIComponent(item.item_id) + "/release", {
        claim_id: item.claim_id,
        reason: "skipped",
      });
    } catch (err) {
      handleError(err);
      if (err.status === 401) return;
    } finally {
      setBusy(false);
    }
    await next();
  }

  async function login(token) {
    state.token = token;
    try {
      const me = await api("GET", "/api/me");
      sessionStorage.setItem(TOKEN_KEY, token);
      $("reviewer-name").textContent = me.reviewer;
      $("who").hidden = false;
      $("login").hidden = true;
      $("workspace").hidden = false;
      hideBanner();
      await next();
    } catch (err) {
      if (err.status === 401) showLogin("Token refused: " + err.message);
      else handleError(err);
    }
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.tagName === "INPUT" && target.type !== "checkbox")) return;
    if (target && target.tagName === "TEXTAREA") return;
    const key = event.key;
    if (key === "z" || key === "Z") {
      event.preventDefault();
      startCorrection();
      return;
    }
    if (key === "Escape" && state.correcting) {
      event.preventDefault();
      leaveCorrection();
      return;
    }
    if (!state.item || $("item").hidden) return;
    if (key >= "1" && key <= "9") {
      const labels = state.item.schema.labels;
      const index = Number(key) - 1;
      if (index < labels.length) {
        event.preventDefault();
        submit(labels[index].name);
      }
    } else if (key === "u" || key === "U") {
      event.preventDefault();
      setUnsure(!$("unsure").checked);
    } else if (key === "s" || key === "S") {
      event.preventDefault();
      skip();
    }
  }

  // ------------------------------------------------------------------ wiring

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (token) login(token);
    });
    $("logout").addEventListener("click", () => {
      const item = claimedItem();
      if (item) {
        api("POST", "/api/items/" + encodeURIComponent(item.item_id) + "/release", {
          claim_id: item.claim_id,
          reason: "logged out",
        }).catch(() => {});
      }
      showLogin();
    });
    $("banner-close").addEventListener("click", hideBanner);
    $("retry").addEventListener("click", next);
    $("skip").addEventListener("click", skip);
    $("undo").addEventListener("click", startCorrection);
    $("correction-cancel").addEventListener("click", leaveCorrection);
    $("unsure").addEventListener("change", () => setUnsure($("unsure").checked));
    $("unsure-submit").addEventListener("click", () => submit(""));
    document.addEventListener("keydown", onKey);
    window.addEventListener("pagehide", () => {
      const item = claimedItem();
      if (!item || !state.token) return;
      // Best effort: give the item back at once instead of waiting for the lease to expire.
      fetch("/api/items/" + encodeURIComponent(item.item_id) + "/release", {
        method: "POST",
        keepalive: true,
        headers: { Authorization: "Bearer " + state.token, "Content-Type": "application/json" },
        body: JSON.stringify({ claim_id: item.claim_id, reason: "page closed" }),
      }).catch(() => {});
    });

    if (state.token) login(state.token);
    else showLogin();
  });
})();
