// The annotation page. Text from the server is only ever set with textContent (never as HTML),
// so a speech or reply holding markup shows as text. The token lives in sessionStorage and is
// sent as a Bearer header on every API call.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("annotator-token"), me: null, index: 0, item: null, rubric: [], answer: null };
// Every action waits for the one before it: a fast "→ then 3" answers the pair that "→" opened.
let chain = Promise.resolve();
const queue = (action) => (chain = chain.then(action).catch((e) => console.warn(e.message)));

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    signOut("Your token was not accepted.");
    throw new Error("unauthorised");
  }
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status}`);
  return response.json();
}

function show(section) {
  for (const id of ["signin", "annotate", "finished"]) $(id).hidden = id !== section;
}

function signOut(message) {
  sessionStorage.removeItem("annotator-token");
  state.token = null;
  show("signin");
  $("signin-error").textContent = message || "";
  $("signin-error").hidden = !message;
}

async function signIn(token) {
  state.token = token;
  try {
    state.me = await api("GET", "/api/me");
  } catch (e) {
    return;
  }
  sessionStorage.setItem("annotator-token", token);
  $("who").textContent = `Signed in as ${state.me.annotator}`;
  $("who").hidden = false;
  $("remote").hidden = !state.me.remote;
  if (state.me.principles) {
    state.rubric = await api("GET", "/api/rubric");
    buildPrinciples();
  }
  await open(state.me.next);
}

function buildPrinciples() {
  const rows = $("principle-rows");
  rows.replaceChildren();
  for (const p of state.rubric) {
    const row = document.createElement("div");
    row.className = "principle";
    const about = document.createElement("details");
    const name = document.createElement("summary");
    name.textContent = p.name;
    const text = document.createElement("p");
    text.textContent = `${p.definition} 1: ${p.anchors["1"]} 3: ${p.anchors["3"]} 5: ${p.anchors["5"]}`;
    about.append(name, text);
    const scales = document.createElement("div");
    for (const side of ["A", "B"]) {
      const scale = document.createElement("div");
      scale.className = "scale";
      const label = document.createElement("span");
      label.textContent = side === "A" ? "Reply 1:" : "Reply 2:";
      scale.append(label);
      for (let v = 1; v <= 5; v++) {
        const choice = document.createElement("label");
        const input = document.createElement("input");
        Object.assign(input, { type: "radio", name: `score-${side}-${p.key}`, value: String(v) });
        Object.assign(input.dataset, { side, principle: p.key });
        input.style.width = "auto";
        input.addEventListener("change", () => {
          input.blur(); // give the keys (1/2/3, arrows) back to the page
          queue(save);
        });
        choice.append(input, ` ${v}`);
        scale.append(choice);
      }
      scales.append(scale);
    }
    row.append(about, scales);
    rows.append(row);
  }
  $("principles").hidden = false;
}

async function open(index) {
  if (index >= state.me.total) {
    show("finished");
    return;
  }
  state.index = Math.max(0, index);
  const item = await api("GET", `/api/item/${state.index}`);
  state.item = item;
  state.answer = item.answer || { preference: null, scores: {}, comment: "", flagged: false };
  $("speech").textContent = item.speech;
  $("reply-a").textContent = item.reply_a;
  $("reply-b").textContent = item.reply_b;
  $("crisis").hidden = item.crisis === "none";
  $("crisis-resources").textContent = item.resources.length
    ? `If you need support yourself: ${item.resources.map((r) => `${r.name}, ${r.contact}`).join("; ")}.`
    : "";
  $("comment").value = state.answer.comment;
  for (const input of document.querySelectorAll("#principle-rows input")) {
    const side = state.answer.scores[input.dataset.side] || {};
    input.checked = side[input.dataset.principle] === Number(input.value);
  }
  render(item);
  show("annotate");
  window.scrollTo(0, 0);
}

function render(progress) {
  $("progress").max = progress.total;
  $("progress").value = progress.done;
  $("progress-text").textContent = `${progress.done} of ${progress.total} done · pair ${state.index + 1}`;
  for (const pick of ["A", "B", "tie"]) $(`pick-${pick}`).classList.toggle("selected", state.answer.preference === pick);
  $("flag").setAttribute("aria-pressed", String(state.answer.flagged));
}

async function save() {
  const scores = { A: {}, B: {} };
  for (const input of document.querySelectorAll("#principle-rows input:checked")) {
    scores[input.dataset.side][input.dataset.principle] = Number(input.value);
  }
  state.answer.scores = scores;
  state.answer.comment = $("comment").value;
  const progress = await api("PUT", "/api/answer", { pair_id: state.item.pair_id, ...state.answer });
  state.me.done = progress.done;
  render(progress);
  $("saved").textContent = "Saved";
}

async function pick(choice) {
  state.answer.preference = choice;
  await save();
  if (!state.me.principles) await open(state.index + 1); // with principle scores, move on with the arrow
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim());
  });
  for (const choice of ["A", "B", "tie"]) $(`pick-${choice}`).addEventListener("click", () => queue(() => pick(choice)));
  $("prev").addEventListener("click", () => queue(() => open(Math.max(0, state.index - 1))));
  $("next").addEventListener("click", () => queue(() => open(state.index + 1)));
  $("review").addEventListener("click", () => queue(() => open(0)));
  $("flag").addEventListener("click", () =>
    queue(() => {
      state.answer.flagged = !state.answer.flagged;
      return save();
    }),
  );
  $("comment").addEventListener("change", () => queue(save));
  document.addEventListener("keydown", (event) => {
    const typing = event.target.tagName === "TEXTAREA" || (event.target.tagName === "INPUT" && event.target.type !== "radio");
    if ($("annotate").hidden || typing) return;
    const key = { 1: "A", 2: "B", 3: "tie" }[event.key];
    if (key) queue(() => pick(key));
    else if (event.key === "ArrowRight") queue(() => open(state.index + 1));
    else if (event.key === "ArrowLeft") queue(() => open(Math.max(0, state.index - 1)));
    else return;
    event.preventDefault();
  });
  if (state.token) signIn(state.token);
  else show("signin");
});
