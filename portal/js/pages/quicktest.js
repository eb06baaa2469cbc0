// Quick test: one picture (a file, or a URL the service fetches) against a trained iteration,
// with the predicted tags drawn over the picture.

import { training, seg } from "../api.js";
import { h, fill, field, pct } from "../dom.js";
import { trainedIterations, iterationPicker, noIterations } from "./common.js";

function overlay(pictureUrl, predictions) {
  const top = predictions.slice(0, 5);
  const labels = h("ol", { class: "overlay-tags", "aria-label": "Predicted tags" },
    top.map((p) => h("li", {}, h("span", { class: "tag-name" }, p.tagName), ` ${pct(p.probability)}`)));
  const boxes = predictions.some((p) => p.boundingBox)
    ? h("p", { class: "notice" }, "This model predicts regions: drawing boxes is not available in the portal yet.")
    : null;
  return h("figure", { class: "quicktest-result" },
    h("div", { class: "stage" },
      pictureUrl ? h("img", { src: pictureUrl, alt: "The tested picture" })
        : h("div", { class: "no-preview" }, "No preview: the portal shows only pictures from this computer."),
      labels),
    h("figcaption", {}, top.length ? `Top tag: ${top[0].tagName} (${pct(top[0].probability)})` : "No tag predicted"),
    boxes);
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
      fill(result, overlay(url, answer.predictions ?? []));
    });
  });

  const address = h("input", { type: "url", required: true, autocomplete: "off", placeholder: "https://" });
  const urlForm = h("form", { class: "inline" }, field("Picture URL", address), h("button", { type: "submit" }, "Test URL"));
  urlForm.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.guard(async () => {
      const answer = await training("POST", `${base}/quicktest/url`, { query: { iterationId: picker.value }, json: { url: address.value } });
      fill(result, overlay(null, answer.predictions ?? []));
    });
  });

  fill(root, h("h1", {}, "Quick test"),
    h("section", { class: "card" }, control, fileForm, urlForm), result);
}
