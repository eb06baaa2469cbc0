// Images: upload (file picker, folder, drag and drop) with progress and per-file results, the
// tagged/untagged/by-tag views with paging, bulk tag/untag, tags, and the quarantine list.

import { training, visionpipe, pictureUrl, uploadImage, seg } from "../api.js";
import { h, fill, field, select, table } from "../dom.js";

const PAGE_SIZE = 24;
const MAX_PAGE_SIZE = 96;

function viewQuery(view) {
  if (view === "tagged") return { taggingStatus: "Tagged" };
  if (view === "untagged") return { taggingStatus: "Untagged" };
  if (view.startsWith("tag:")) return { tagIds: view.slice(4) };
  return {};
}

export async function imagesPage(root, ctx) {
  const base = `/projects/${seg(ctx.projectId)}`;
  const view = ctx.params.get("view") ?? "all";
  const page = Math.max(1, Number.parseInt(ctx.params.get("page") ?? "1", 10) || 1);
  const per = Math.min(MAX_PAGE_SIZE, Math.max(1, Number.parseInt(ctx.params.get("per") ?? "", 10) || PAGE_SIZE));
  const [tags, domain] = await Promise.all([
    training("GET", `${base}/tags`),
    training("GET", `/domains/${seg(ctx.project.settings?.domainId ?? "")}`).catch(() => null),
  ]);
  const isDetection = domain?.type === "ObjectDetection";
  const objectUrls = [];
  ctx.onLeave(() => objectUrls.forEach((u) => URL.revokeObjectURL(u)));
  const here = (v, p) => `#/p/${seg(ctx.projectId)}/images?view=${encodeURIComponent(v)}&page=${p}${per === PAGE_SIZE ? "" : `&per=${per}`}`;

  // --- tags ---
  const tagName = h("input", { type: "text", required: true, maxlength: 256, autocomplete: "off" });
  const tagForm = h("form", { class: "inline" }, field("New tag", tagName), h("button", { type: "submit" }, "Add tag"));
  tagForm.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.guard(async () => {
      const tag = await training("POST", `${base}/tags`, { query: { name: tagName.value } });
      ctx.navigate(here(view, page), `Added tag ${tag.name}.`);
    });
  });
  const tagList = h("div", {});
  async function showTags() {
    const current = await training("GET", `${base}/tags`);
    fill(tagList, current.length === 0 ? h("p", {}, "No tags yet.")
      : h("ul", { class: "tags", "aria-label": "Tags" }, current.map((t) => h("li", {},
        h("a", { href: here(`tag:${t.id}`, 1), "aria-current": view === `tag:${t.id}` ? "true" : false }, t.name),
        h("span", { class: "count" }, ` ${t.imageCount} image${t.imageCount === 1 ? "" : "s"}`)))));
  }

  // --- the image view ---
  const viewSelect = select([["all", "All images"], ["tagged", "Tagged"], ["untagged", "Untagged"],
    ...tags.map((t) => [`tag:${t.id}`, `Tag: ${t.name}`])], { value: view });
  viewSelect.value = view;
  viewSelect.addEventListener("change", () => ctx.navigate(here(viewSelect.value, 1)));
  const query = viewQuery(view);
  const selected = new Set();
  const browse = h("div", {});
  async function showImages() {
    const [images, total] = await Promise.all([
      training("GET", `${base}/images`, { query: { ...query, take: per, skip: (page - 1) * per } }),
      training("GET", `${base}/images/count`, { query }),
    ]);
    selected.clear();
    const pages = Math.max(1, Math.ceil(total / per));
    const grid = h("ul", { class: "grid", "aria-label": "Images" }, images.map((image) => {
      const names = (image.tags ?? []).map((t) => t.tagName);
      const short = image.id.slice(0, 8);
      const picture = h("img", { alt: `Image ${short}`, width: 120, height: 120 });
      pictureUrl(`/customvision/v3.4-preview/training${base}/images/${seg(image.id)}/original`)
        .then((u) => { objectUrls.push(u); picture.src = u; })
        .catch(() => { picture.alt = `Image ${short} (could not be loaded)`; });
      const box = h("input", { type: "checkbox", "aria-label": `Select image ${short}` });
      box.addEventListener("change", () => (box.checked ? selected.add(image.id) : selected.delete(image.id)));
      const regions = image.regions?.length ?? 0;
      const label = isDetection ? h("a", { href: `#/p/${seg(ctx.projectId)}/label?image=${encodeURIComponent(image.id)}`,
        "aria-label": `Label boxes on image ${short}` }, `Label boxes (${regions})`) : null;
      return h("li", { class: "tile" }, picture, h("label", {}, box, ` ${short}`),
        h("span", { class: "tile-tags" }, names.length ? names.join(", ") : "untagged"), label);
    }));
    const pager = h("nav", { class: "pager", "aria-label": "Image pages" },
      page > 1 ? h("a", { href: here(view, page - 1) }, "Previous page") : null,
      h("span", {}, ` Page ${page} of ${pages} (${total} image${total === 1 ? "" : "s"}) `),
      page < pages ? h("a", { href: here(view, page + 1) }, "Next page") : null);
    fill(browse, grid, pager);
  }

  // --- bulk tagging ---
  const bulkTag = select(tags.map((t) => [t.id, t.name]));
  const tagSelected = h("button", { type: "button", disabled: tags.length === 0 }, "Tag selected");
  const untagSelected = h("button", { type: "button", class: "secondary", disabled: tags.length === 0 }, "Untag selected");
  tagSelected.addEventListener("click", () => ctx.guard(async () => {
    if (selected.size === 0) throw new Error("select at least one image first");
    const result = await training("POST", `${base}/images/tags`, {
      json: { tags: [...selected].map((imageId) => ({ imageId, tagId: bulkTag.value })) },
    });
    ctx.showStatus(`Tagged ${result.created.length} image(s); ${result.duplicated.length} already had the tag.`);
    await Promise.all([showTags(), showImages()]);
  }));
  untagSelected.addEventListener("click", () => ctx.guard(async () => {
    if (selected.size === 0) throw new Error("select at least one image first");
    await training("DELETE", `${base}/images/tags`, { query: { imageIds: [...selected].join(","), tagIds: bulkTag.value } });
    ctx.showStatus(`Removed the tag from ${selected.size} image(s).`);
    await Promise.all([showTags(), showImages()]);
  }));
  const bulk = h("div", { class: "inline", role: "group", "aria-label": "Tag the selected images" },
    field("Tag for the selected images", bulkTag), tagSelected, untagSelected);

  // --- upload ---
  const uploadTag = select([["", "No tag (untagged)"], ...tags.map((t) => [t.id, t.name])]);
  const files = h("input", { type: "file", multiple: true, accept: "image/jpeg,image/png,image/bmp,image/gif" });
  const folder = h("input", { type: "file", multiple: true, webkitdirectory: true });
  const progress = h("progress", { max: 1, value: 0, "aria-label": "Upload progress" });
  const progressText = h("span", { "aria-live": "polite" }, "");
  const results = h("div", {});
  const drop = h("div", { class: "drop", "aria-hidden": "true" }, "…or drop pictures here");

  async function upload(list) {
    const chosen = [...list].filter((f) => f.size > 0 || f.name);
    if (chosen.length === 0) return;
    const tagIds = uploadTag.value ? [uploadTag.value] : [];
    const totalBytes = chosen.reduce((n, f) => n + f.size, 0) || 1;
    let doneBytes = 0;
    const rows = [];
    for (const [i, file] of chosen.entries()) {
      progressText.textContent = `Uploading ${i + 1} of ${chosen.length}`;
      try {
        const summary = await uploadImage(ctx.projectId, file, tagIds, (fraction) => {
          progress.value = (doneBytes + fraction * file.size) / totalBytes;
        });
        const first = summary.images?.[0] ?? {};
        rows.push([file.name, first.status ?? "", first.reason ?? ""]);
      } catch (error) {
        rows.push([file.name, error.code ?? "Error", error.message]);
      }
      doneBytes += file.size;
      progress.value = doneBytes / totalBytes;
    }
    const ok = rows.filter((r) => r[1] === "OK" || r[1] === "OKDuplicate").length;
    progressText.textContent = `Uploaded ${ok} of ${chosen.length}`;
    fill(results, table("Upload results", ["File", "Status", "Reason"], rows));
    await Promise.all([showTags(), showImages()]);
  }
  files.addEventListener("change", () => ctx.guard(() => upload(files.files)));
  folder.addEventListener("change", () => ctx.guard(() => upload(folder.files)));
  const uploadCard = h("section", { class: "card", "aria-labelledby": "upload-title" },
    h("h2", { id: "upload-title" }, "Upload images"),
    field("Tag the uploads with", uploadTag),
    field("Pictures", files), field("A folder of pictures", folder), drop,
    h("div", { class: "inline" }, progress, progressText), results);
  uploadCard.addEventListener("dragover", (e) => { e.preventDefault(); uploadCard.classList.add("dragging"); });
  uploadCard.addEventListener("dragleave", () => uploadCard.classList.remove("dragging"));
  uploadCard.addEventListener("drop", (e) => {
    e.preventDefault();
    uploadCard.classList.remove("dragging");
    ctx.guard(() => upload(e.dataTransfer.files));
  });

  // --- quarantine ---
  const quarantine = h("section", { class: "card", "aria-labelledby": "quarantine-title" },
    h("h2", { id: "quarantine-title" }, "Quarantine"), h("p", {}, "Loading…"));
  visionpipe("GET", `/projects/${seg(ctx.projectId)}/quarantine`).then((items) => {
    fill(quarantine, h("h2", { id: "quarantine-title" }, "Quarantine"),
      items.length === 0 ? h("p", {}, "Nothing dropped into this project's folders was rejected.")
        : table("Files the drop folders rejected", ["Container", "File", "Reason", "Message"],
          items.map((q) => [q.container ?? "", q.source?.path ?? "", q.reason ?? "", q.message ?? ""])));
  }).catch(ctx.showError);

  const detection = isDetection
    ? h("p", { class: "notice" }, "Object detection: open an image's \u201cLabel boxes\u201d to draw its boxes and give each a tag.")
    : null;

  fill(root, h("h1", {}, "Images"), detection,
    h("section", { class: "card", "aria-labelledby": "tags-title" }, h("h2", { id: "tags-title" }, "Tags"), tagList, tagForm),
    uploadCard,
    h("section", { class: "card", "aria-labelledby": "view-title" },
      h("h2", { id: "view-title" }, "Browse"), field("Show", viewSelect), bulk, browse),
    quarantine);
  await Promise.all([showTags(), showImages()]);
}
