// Train: queue a Regular or Advanced (with a budget in hours) training, follow it live (visionpipe's progress route), cancel it.

import { training, visionpipe, seg } from "../api.js";
import { h, fill, table } from "../dom.js";

const POLL_MS = 2000;
const MAX_BUDGET_HOURS = 10000; // what POST .../train accepts for reservedBudgetInHours

const KNOWN = [["phase", "Phase"], ["epoch", "Epoch"], ["trainLoss", "Training loss"], ["valMetric", "Validation metric"]];

function shown(value) {
  return typeof value === "number" ? String(Number(value.toFixed(4))) : String(value);
}

/** The training job's progress: its known fields by name, then anything else it reported. */
function progressList(progress) {
  const facts = progress ?? {};
  const rows = [];
  for (const [name, label] of KNOWN) {
    if (facts[name] === null || facts[name] === undefined) continue;
    const value = name === "epoch" && facts.epochs ? `${facts.epoch} of ${facts.epochs}` : shown(facts[name]);
    rows.push([label, value, name]);
  }
  for (const [name, value] of Object.entries(facts)) {
    if (name === "epochs" || KNOWN.some(([k]) => k === name) || value === null || typeof value === "object") continue;
    rows.push([name, shown(value), name]);
  }
  if (rows.length === 0) return h("p", {}, "Waiting for the training job to start…");
  return h("dl", { class: "facts" }, rows.flatMap(([label, value, name]) => [
    h("dt", {}, label), h("dd", { "data-progress": name }, value),
  ]));
}

export async function trainPage(root, ctx) {
  const base = `/projects/${seg(ctx.projectId)}`;
  const live = h("section", { class: "card", "aria-labelledby": "live-title", "aria-live": "polite" });
  const history = h("div", {});
  let timer = null;
  let left = false; // a poll in flight when the page is left must not schedule another
  ctx.onLeave(() => { left = true; clearTimeout(timer); });

  async function follow(iterationId, name) {
    const state = await visionpipe("GET", `${base}/iterations/${seg(iterationId)}/progress`);
    const running = state.status === "Training" || state.status === "Queued";
    const cancel = running ? h("button", { type: "button", class: "danger" }, "Cancel training") : null;
    cancel?.addEventListener("click", () => ctx.guard(async () => {
      cancel.disabled = true;
      await visionpipe("POST", `${base}/iterations/${seg(iterationId)}/cancel`);
      clearTimeout(timer);
      await follow(iterationId, name);
    }));
    const hadFocus = live.contains(document.activeElement);
    fill(live, h("h2", { id: "live-title" }, "Training progress"),
      h("p", {}, `${name}: `, h("strong", { class: "training-status" }, state.status)),
      state.failureReason ? h("p", { class: "error" }, state.failureReason) : null,
      progressList(state.progress), cancel);
    if (hadFocus && cancel) cancel.focus(); // a refresh must not drop keyboard focus
    if (left) return;
    if (running) {
      timer = setTimeout(() => ctx.guard(() => follow(iterationId, name)), POLL_MS);
    } else {
      await showHistory();
    }
  }

  async function showHistory() {
    const iterations = await training("GET", `${base}/iterations`);
    fill(history, iterations.length === 0 ? h("p", {}, "No iterations yet.")
      : table("Iterations", ["Name", "Status", "Type", "Budget", "Created"], iterations.map((it) => [
        it.name, it.status, it.trainingType ?? "", it.reservedBudgetInHours ? `${it.reservedBudgetInHours} h` : "",
        it.created ? new Date(it.created).toLocaleString() : "",
      ])));
    return iterations;
  }

  // Regular or Advanced with a budget in hours, sent as the SDK's train_project sends them:
  // query parameters trainingType and reservedBudgetInHours of POST .../train.
  const regular = h("input", { type: "radio", name: "training-type", value: "Regular", checked: true, id: "type-regular" });
  const advanced = h("input", { type: "radio", name: "training-type", value: "Advanced", id: "type-advanced" });
  const budget = h("input", { type: "number", min: 1, max: MAX_BUDGET_HOURS, step: 1, value: "1", disabled: true, id: "budget-hours", inputmode: "numeric" });
  const budgetHint = h("span", { class: "hint", id: "budget-hint" }, "Advanced training trains longer, within this many hours.");
  budget.setAttribute("aria-describedby", budgetHint.id);
  const train = h("button", { type: "button" }, "Train (Regular)");
  const chosenType = () => (advanced.checked ? "Advanced" : "Regular");
  for (const radio of [regular, advanced]) {
    radio.addEventListener("change", () => {
      budget.disabled = !advanced.checked;
      train.textContent = `Train (${chosenType()})`;
    });
  }
  const typeChoice = h("fieldset", {},
    h("legend", {}, "Training type"),
    h("div", { class: "inline" },
      h("span", {}, regular, " ", h("label", { for: regular.id }, "Regular")),
      h("span", {}, advanced, " ", h("label", { for: advanced.id }, "Advanced"))),
    h("div", { class: "field budget" }, h("label", { for: budget.id }, "Budget (hours)"), budget, budgetHint));
  train.addEventListener("click", () => ctx.guard(async () => {
    const trainingType = chosenType();
    const query = { trainingType };
    if (trainingType === "Advanced") {
      const hours = Number(budget.value);
      if (!Number.isInteger(hours) || hours < 1 || hours > MAX_BUDGET_HOURS) {
        budget.focus();
        throw new Error(`the budget is a whole number of hours from 1 to ${MAX_BUDGET_HOURS}`);
      }
      query.reservedBudgetInHours = hours;
    }
    train.disabled = true;
    try {
      const iteration = await training("POST", `${base}/train`, { query });
      ctx.showStatus(`Training queued: ${iteration.name} (${iteration.trainingType ?? trainingType}${query.reservedBudgetInHours ? `, ${query.reservedBudgetInHours} h budget` : ""}).`);
      await showHistory();
      await follow(iteration.id, iteration.name);
    } finally {
      train.disabled = false;
    }
  }));

  fill(root, h("h1", {}, "Train"),
    h("section", { class: "card" }, h("p", {}, "Regular training fine-tunes a model on the tagged images; Advanced training trains longer within a budget of hours. The project needs at least two tags with enough images each; the API says which rule is not met."),
      typeChoice, train),
    live, history);
  const iterations = await showHistory();
  const running = iterations.find((it) => it.status === "Training" || it.status === "Queued");
  if (running) await follow(running.id, running.name);
  else fill(live, h("h2", { id: "live-title" }, "Training progress"), h("p", {}, "No training in progress."));
}
