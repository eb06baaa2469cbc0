// Box arithmetic for the labelling page: boxes are [left, top, width, height] fractions of the
// picture, kept inside it (the API refuses a box that reaches outside) and rounded so repeated
// 1% steps do not drift into 0.15000000000000002.

const MIN_SIDE = 0.01;

export const round = (x) => Math.round(Number(x) * 1e6) / 1e6;

/** A box from the API's {left, top, width, height} or an array, clipped to the picture. */
export function clampBox(box) {
  const [l, t, w, hh] = Array.isArray(box) ? box : [box.left, box.top, box.width, box.height];
  const left = Math.min(Math.max(0, Number(l) || 0), 1 - MIN_SIDE);
  const top = Math.min(Math.max(0, Number(t) || 0), 1 - MIN_SIDE);
  const width = Math.min(Math.max(MIN_SIDE, Number(w) || 0), 1 - left);
  const height = Math.min(Math.max(MIN_SIDE, Number(hh) || 0), 1 - top);
  return [round(left), round(top), round(width), round(height)];
}

/** The box shifted by (dx, dy), stopping at the picture's edges with its size kept. */
export function moved([left, top, width, height], dx, dy) {
  return [round(Math.min(Math.max(0, left + dx), 1 - width)),
    round(Math.min(Math.max(0, top + dy), 1 - height)), width, height];
}

/** The box with its right and bottom edges moved by (dx, dy), at least MIN_SIDE wide and tall. */
export function resized([left, top, width, height], dw, dh) {
  return [left, top, round(Math.min(Math.max(MIN_SIDE, width + dw), 1 - left)),
    round(Math.min(Math.max(MIN_SIDE, height + dh), 1 - top))];
}

export function sameBox(a, b) {
  return a.every((v, i) => Math.abs(v - b[i]) < 1e-6);
}

/** Intersection over union of two boxes. */
export function boxIou(a, b) {
  const x = Math.max(0, Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]));
  const y = Math.max(0, Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]));
  const inter = x * y;
  const union = a[2] * a[3] + b[2] * b[3] - inter;
  return union > 0 ? inter / union : 0;
}
