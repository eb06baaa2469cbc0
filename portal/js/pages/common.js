// Helpers the model pages share: picking a trained iteration.

import { training, seg } from "../api.js";
import { h, field, select } from "../dom.js";

/** The project's Completed iterations, newest first. */
export async function trainedIterations(projectId) {
  const all = await training("GET", `/projects/${seg(projectId)}/iterations`);
  return all.filter((it) => it.status === "Completed");
}

/** A labelled <select> of iterations (publish name shown), preselecting `current`. */
export function iterationPicker(iterations, current, label = "Iteration") {
  const picker = select(iterations.map((it) => [it.id, it.publishName ? `${it.name} (published as ${it.publishName})` : it.name]));
  if (current) picker.value = current;
  return { picker, control: field(label, picker) };
}

export function noIterations(what) {
  return h("p", {}, `No trained iteration yet: ${what} needs one. `, h("a", { href: "#/" }, "Back to the projects"));
}
