// Projects: list, create (classification type and domain), delete.

import { training, seg } from "../api.js";
import { h, fill, field, select, table } from "../dom.js";

function deleteButton(project, ctx, refresh) {
  const cell = h("span", {});
  const ask = h("button", { type: "button", class: "danger", "aria-label": `Delete project ${project.name}` }, "Delete");
  ask.addEventListener("click", () => {
    const yes = h("button", { type: "button", class: "danger" }, "Yes, delete");
    const no = h("button", { type: "button", class: "secondary" }, "Keep");
    yes.addEventListener("click", () => ctx.guard(async () => {
      await training("DELETE", `/projects/${seg(project.id)}`);
      ctx.showStatus(`Deleted project ${project.name}.`);
      await refresh();
    }));
    no.addEventListener("click", () => { fill(cell, ask); ask.focus(); });
    fill(cell, h("span", {}, `Delete ${project.name} and all its images and iterations? `), yes, " ", no);
    no.focus();
  });
  return fill(cell, ask);
}

export async function projectsPage(root, ctx) {
  const domains = await training("GET", "/domains");
  const domainName = new Map(domains.map((d) => [d.id, `${d.name} (${d.type})`]));
  const list = h("div", {});

  async function refresh() {
    const current = await training("GET", "/projects");
    fill(list, current.length === 0
      ? h("p", {}, "No projects yet: create one below.")
      : table("Your projects", ["Name", "Type", "Domain", "Created", ""], current.map((p) => [
        h("a", { href: `#/p/${seg(p.id)}/images` }, p.name),
        p.settings?.classificationType ?? "",
        domainName.get(p.settings?.domainId) ?? p.settings?.domainId ?? "",
        p.created ? new Date(p.created).toLocaleString() : "",
        deleteButton(p, ctx, refresh),
      ])));
  }

  const name = h("input", { type: "text", required: true, maxlength: 256, autocomplete: "off" });
  const description = h("input", { type: "text", maxlength: 1024, autocomplete: "off" });
  const domain = select(domains.filter((d) => d.enabled !== false).map((d) => [d.id, `${d.name} (${d.type})`]));
  const kind = select([["Multiclass", "Multiclass (one tag per image)"], ["Multilabel", "Multilabel (any number of tags)"]]);
  const create = h("form", { class: "card", "aria-labelledby": "create-title" },
    h("h2", { id: "create-title" }, "New project"),
    field("Name", name), field("Description", description),
    field("Domain", domain, "Object detection domains are listed; drawing boxes in the portal is not available yet."),
    field("Classification type", kind),
    h("button", { type: "submit" }, "Create project"));
  create.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.guard(async () => {
      const project = await training("POST", "/projects", {
        query: { name: name.value, description: description.value, domainId: domain.value, classificationType: kind.value },
      });
      ctx.navigate(`#/p/${seg(project.id)}/images`, `Created project ${project.name}.`);
    });
  });

  fill(root, h("h1", {}, "Projects"), list, create);
  await refresh();
}
