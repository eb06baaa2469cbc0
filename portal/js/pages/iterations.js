// Iterations: publish under a name, unpublish, export ONNX, delete.

import { training, seg } from "../api.js";
import { h, fill, table } from "../dom.js";

export async function iterationsPage(root, ctx) {
  const base = `/projects/${seg(ctx.projectId)}`;
  const again = (message) => ctx.navigate(`#/p/${seg(ctx.projectId)}/iterations`, message);
  const iterations = await training("GET", `${base}/iterations`);

  function actions(it) {
    const path = `${base}/iterations/${seg(it.id)}`;
    const cell = h("div", { class: "actions" });
    const parts = [];
    if (it.status === "Completed" && !it.publishName) {
      const name = h("input", { type: "text", required: true, maxlength: 256, autocomplete: "off", "aria-label": `Publish name for ${it.name}`, placeholder: "publish name" });
      const form = h("form", { class: "inline" }, name, h("button", { type: "submit" }, "Publish"));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        ctx.guard(async () => {
          await training("POST", `${path}/publish`, { query: { publishName: name.value, predictionId: "visionpipe" } });
          again(`Published ${it.name} as ${name.value}.`);
        });
      });
      parts.push(form);
    }
    if (it.publishName) {
      parts.push(h("button", { type: "button", class: "secondary", onclick: () => ctx.guard(async () => {
        await training("DELETE", `${path}/publish`);
        again(`Unpublished ${it.name}.`);
      }) }, `Unpublish ${it.publishName}`));
    }
    if (it.status === "Completed") {
      const link = h("span", {});
      parts.push(h("button", { type: "button", class: "secondary", onclick: () => ctx.guard(async () => {
        const exported = await training("POST", `${path}/export`, { query: { platform: "ONNX" } });
        fill(link, exported.downloadUri
          ? h("a", { href: exported.downloadUri, download: `${it.id}.onnx` }, "Download the ONNX model")
          : ` Export ${exported.status}`);
      }) }, "Export ONNX"), link);
    }
    const remove = h("button", { type: "button", class: "danger", "aria-label": `Delete iteration ${it.name}` }, "Delete");
    remove.addEventListener("click", () => {
      const yes = h("button", { type: "button", class: "danger", onclick: () => ctx.guard(async () => {
        await training("DELETE", path);
        again(`Deleted ${it.name}.`);
      }) }, "Yes, delete");
      const no = h("button", { type: "button", class: "secondary", onclick: () => { fill(cell, parts, remove); remove.focus(); } }, "Keep");
      fill(cell, h("span", {}, `Delete ${it.name}? `), yes, " ", no);
      no.focus();
    });
    return fill(cell, parts, remove);
  }

  fill(root, h("h1", {}, "Iterations"), iterations.length === 0 ? h("p", {}, "No iterations yet: train one.")
    : table("Iterations, newest first", ["Name", "Status", "Published as", "Created", "Actions"], iterations.map((it) => [
      it.name, it.status, it.publishName || "—", it.created ? new Date(it.created).toLocaleString() : "", actions(it),
    ])));
}
