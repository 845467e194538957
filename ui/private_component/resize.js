// Decode and resize in the browser exactly as the server does (core/dataset/images.py with Pillow):
// upright (EXIF orientation), transparency on white, the longer side reduced to at most max_side,
// then a bilinear stretch of the whole frame to the model's input. The resampling is Pillow's own
// algorithm (Resample.c: a triangle filter widened by the scale, 22-bit fixed-point weights,
// horizontal pass first, rounding to 8 bits after each pass), so equal pixels give equal inputs.

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

function bilinear(x) {
  x = Math.abs(x);
  return x < 1 ? 1 - x : 0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for a box [in0, in1) of an axis of inSize pixels.
function coefficients(inSize, in0, in1, outSize) {
  const scale = (in1 - in0) / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filterscale;  // the bilinear filter's support is 1
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let total = 0;
    const k = new Float64Array(count);
    for (let x = 0; x < count; x++) {
      k[x] = bilinear((x + xmin - center + 0.5) / filterscale);
      total += k[x];
    }
    for (let x = 0; x < count; x++) {
      const w = total !== 0 ? k[x] / total : k[x];
      weights[xx * ksize + x] = Math.trunc(w < 0 ? -0.5 + w * ONE : 0.5 + w * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = count;
  }
  return { ksize, bounds, weights };
}

function clip8(value) {
  if (value >= ONE * 256) return 255;
  if (value <= 0) return 0;
  return Math.floor(value / ONE);
}

// One pass of Pillow's ImagingResampleHorizontal/Vertical_8bpc over an RGBA image.
function resampleAxis(src, width, height, outWidth, outHeight, horizontal) {
  const c = horizontal ? coefficients(width, 0, width, outWidth) : coefficients(height, 0, height, outHeight);
  const out = new Uint8ClampedArray(outWidth * outHeight * 4);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const i = horizontal ? x : y;
      const start = c.bounds[i * 2], count = c.bounds[i * 2 + 1], base = i * c.ksize;
      let r = ONE / 2, g = ONE / 2, b = ONE / 2;
      for (let t = 0; t < count; t++) {
        const p = horizontal ? (y * width + start + t) * 4 : ((start + t) * width + x) * 4;
        const w = c.weights[base + t];
        r += src[p] * w; g += src[p + 1] * w; b += src[p + 2] * w;
      }
      const o = (y * outWidth + x) * 4;
      out[o] = clip8(r); out[o + 1] = clip8(g); out[o + 2] = clip8(b); out[o + 3] = 255;
    }
  }
  return out;
}

// Pillow's Image.resize(..., BILINEAR) of an RGBA buffer (alpha ignored: the image is opaque by now).
export function resize(rgba, width, height, outWidth, outHeight) {
  let data = rgba, w = width;
  if (outWidth !== width) { data = resampleAxis(data, width, height, outWidth, height, true); w = outWidth; }
  if (outHeight !== height) data = resampleAxis(data, w, height, outWidth, outHeight, false);
  return data;
}

// core.dataset.images._shrink: the longer side at most maxSide, sides rounded as Python's round() does.
function shrink(picture, maxSide) {
  const { rgba, width, height } = picture;
  if (!maxSide || Math.max(width, height) <= maxSide) return picture;
  const scale = maxSide / Math.max(width, height);
  const w = Math.max(1, roundHalfEven(width * scale)), h = Math.max(1, roundHalfEven(height * scale));
  return { rgba: resize(rgba, width, height, w, h), width: w, height: h };
}

function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function opaquePixels(source, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#ffffff";  // transparency on white, as the server composites it
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(source, 0, 0);
  return ctx.getImageData(0, 0, width, height, { colorSpace: "srgb" }).data;
}

// The picked file decoded in this browser: upright RGBA pixels, reduced like an upload on the server.
export async function decodeFile(file, args) {
  const bitmap = await createImageBitmap(file, {
    imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none",
  });
  const { width, height } = bitmap;
  if (width * height > args.max_pixels) {
    bitmap.close();
    throw new Error(`the image is too large: ${width}×${height} = ${(width * height / 1e6).toFixed(1)} megapixels ` +
      `(the limit is ${args.max_pixels / 1e6} megapixels)`);
  }
  const rgba = opaquePixels(bitmap, width, height);
  bitmap.close();
  return shrink({ rgba, width, height }, args.max_side);
}

export function frameFromVideo(video, args) {
  const width = video.videoWidth, height = video.videoHeight;
  return shrink({ rgba: opaquePixels(video, width, height), width, height }, args.max_side);
}

// The model's input: the whole frame stretched to width x height, float32 RGB in 0..255 (NHWC, batch 1).
export function modelInput(rgba, width, height, args) {
  const small = resize(rgba, width, height, args.width, args.height);
  const input = new Float32Array(args.width * args.height * 3);
  for (let i = 0, j = 0; i < small.length; i += 4, j += 3) {
    input[j] = small[i]; input[j + 1] = small[i + 1]; input[j + 2] = small[i + 2];
  }
  return input;
}
