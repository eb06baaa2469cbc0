// Quick test: one picture (a file, or a URL the service fetches) against a trained iteration,
// with the predicted tags drawn over the picture.

import { training, pictureUrl, seg, TRAINING } from "../api.js";
import { h, fill, field, table, pct } from "../dom.js";
import { trainedIterations, iterationPicker, noIterations } from "./common.js";

const BOX_FLOOR = 0.5; // boxes drawn over the picture: the confident ones (all are listed)

function boxesOver(predictions) {
  const shown = predictions.filter((p) => p.boundingBox && p.probability >= BOX_FLOOR);
  const list = h("ul", { class: "overlay-boxes", "aria-label": "Predicted boxes" }, shown.map((p) => {
    const item = h("li", {}, h("span", {}, `${p.tagName} ${pct(p.probability)}`));
    const b = p.boundingBox;
    item.style.left = `${b.left * 100}%`;
    item.style.top = `${b.top * 100}%`;
    item.style.width = `${b.width * 100}%`;
    item.style.height = `${b.height * 100}%`;
    return item;
  }));
  return list;
}

function overlay(src, predictions, source) {
  const top = predictions.slice(0, 5);
  const isDetection = predictions.some((p) => p.boundingBox);
  const labels = isDetection ? boxesOver(predictions)
    : h("ol", { class: "overlay-tags", "aria-label": "Predicted tags" },
      top.map((p) => h("li", {}, h("span", { class: "tag-name" }, p.tagName), ` ${pct(p.probability)}`)));
  return h("figure", { class: "quicktest-result" },
    h("div", { class: "stage" },
      src ? h("img", { src, alt: "The tested picture" })
        : h("div", { class: "no-preview" }, "No preview: the service did not keep this picture."),
      labels),
    h("figcaption", {}, source ? `${source}. ` : "",
      top.length ? `Top ${isDetection ? "box" : "tag"}: ${top[0].tagName} (${pct(top[0].probability)})` : "No tag predicted"),
    isDetection ? table("Predicted boxes", ["Tag", "Probability", "Left · top · width · height"],
      predictions.filter((p) => p.probability >= BOX_FLOOR).map((p) => [p.tagName, pct(p.probability),
        [p.boundingBox.left, p.boundingBox.top, p.boundingBox.width, p.boundingBox.height].map(pct).join(" · ")]))
      : null);
}

export async function quickTestPage(root, ctx) {
  const base = `/projects/${seg(ctx.projectId)}`;
  const iterations = await trainedIterations(ctx.projectId);
  if (iterations.length === 0) return fill(root, h("h1", {}, "Quick test"), noIterations("a quick test"));
  const { picker, control } = iterationPicker(iterations, ctx.params.get("iteration"));
  const result = h("div", { "aria-live": "polite" });
  const urls = [];
  ctx.onLeave(() => urls.forEach((u) => URL.revokeObjectURL(u)));

  const file = h("input", { type: "file", accept: "image/jpeg,image/png,image/bmp,image/gif" });
  const fileForm = h("form", { class: "inline" }, field("Picture", file), h("button", { type: "submit" }, "Test picture"));
  fileForm.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.guard(async () => {
      const chosen = file.files[0];
      if (!chosen) throw new Error("choose a picture first");
      const form = new FormData();
      form.append("imageData", chosen, chosen.name);
      const answer = await training("POST", `${base}/quicktest/image`, { query: { iterationId: picker.value }, body: form });
      const url = URL.createObjectURL(chosen);
      urls.push(url);
      fill(result, overlay(url, answer.predictions ?? [], `Tested ${chosen.name}`));
    });
  });

  const address = h("input", { type: "url", required: true, autocomplete: "off", placeholder: "https://" });
  const urlForm = h("form", { class: "inline" }, field("Picture URL", address), h("button", { type: "submit" }, "Test URL"));
  urlForm.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.guard(async () => {
      const answer = await training("POST", `${base}/quicktest/url`, { query: { iterationId: picker.value }, json: { url: address.value } });
      // The portal may not load other origins (its CSP): the picture shown is the one the
      // service fetched and kept with the stored prediction, read back with the key.
      let url = null;
      if (answer.id) {
        url = await pictureUrl(`${TRAINING}${base}/predictions/${seg(answer.id)}/original`).catch(() => null);
        if (url) urls.push(url);
      }
      fill(result, overlay(url, answer.predictions ?? [], `Tested ${address.value}`));
    });
  });

  fill(root, h("h1", {}, "Quick test"),
    h("section", { class: "card" }, control, fileForm, urlForm), result);
}
