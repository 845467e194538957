// Predict's private mode: decode, resize, classify and gate an image inside this browser.
// Only numbers leave this frame (setComponentValue: the raw probabilities and the gate's score);
// the picture, its pixels, its name and the saliency map stay here.
import { loadLiteRt, loadAndCompile, Tensor } from "./node_modules/@litertjs/core/dist/index.js";
import { decodeFile, frameFromVideo, modelInput } from "./resize.js";

const WASM_DIR = "./node_modules/@litertjs/core/wasm/";
const opened = performance.now();
const state = { args: null, model: null, loading: null, count: 0, loadMs: null, stream: null };
const $ = (id) => document.getElementById(id);

function send(type, data) {
  window.parent.postMessage({ isStreamlitMessage: true, type, ...data }, "*");
}

function fitHeight() {
  send("streamlit:setFrameHeight", { height: document.documentElement.scrollHeight + 4 });
}

function status(text, kind) {
  $("status").textContent = text;
  $("status").dataset.state = kind;
  fitHeight();
}

async function loadModel(args) {
  const started = performance.now();
  await loadLiteRt(WASM_DIR);
  const runtime = performance.now();
  state.model = await loadAndCompile(args.model_url, { accelerator: "wasm" });
  const compiled = performance.now();
  // The first invocation packs the weights for XNNPACK: done now, on a blank frame, not on the user's image.
  await classify(new Float32Array(args.height * args.width * 3));
  state.loadMs = performance.now() - started;
  const steps = { runtime: runtime - started, model: compiled - runtime, first_run: started + state.loadMs - compiled };
  document.body.dataset.loadSteps = JSON.stringify(steps);
  document.body.dataset.loadMs = state.loadMs.toFixed(0);
  document.body.dataset.openToReadyMs = (performance.now() - opened).toFixed(0);
  status(`Model loaded in this browser in ${(state.loadMs / 1000).toFixed(1)} s. Choose an image.`, "ready");
}

function ensureModel() {
  if (!state.loading) {
    state.loading = loadModel(state.args).catch((err) => {
      state.loading = null;
      status(`Private mode is unavailable in this browser: ${err.message || err}`, "error");
      throw err;
    });
  }
  return state.loading;
}

// One invocation: the outputs are told apart by size (probabilities: C, gate: 2, maps: h*w*C).
async function classify(input) {
  const { height, width, classes } = state.args;
  const tensor = new Tensor(input, [1, height, width, 3]);
  const outputs = await state.model.run(tensor);
  tensor.delete();
  const found = {};
  for (const out of outputs) {
    const values = Float32Array.from(out.toTypedArray());
    out.delete();
    if (values.length === classes) found.probabilities = values;
    else if (values.length === 2) found.gate = values;
    else found.cam = values;
  }
  return found;
}

async function onPicture(picture) {
  const picked = picture.picked;
  await ensureModel();
  const input = modelInput(picture.rgba, picture.width, picture.height, state.args);
  const found = await classify(input);
  const ms = performance.now() - picked;
  const score = Math.max(found.gate[0], found.gate[1]);
  const refused = score > state.args.threshold;
  drawPicture(picture);
  drawCam(refused ? null : found, picture);
  state.count += 1;
  const result = { probabilities: Array.from(found.probabilities), gate: score, n: state.count };
  document.body.dataset.result = JSON.stringify({ ...result, ms });
  $("timing").textContent = `Classified in this browser in ${ms.toFixed(0)} ms (from picking the image to the ` +
    `probabilities); model load ${(state.loadMs / 1000).toFixed(1)} s.`;
  status(refused ? "This image was refused by the dermatoscopy check (see below)." :
    "Classified in this browser. The verdict below was drawn from the numbers alone.", refused ? "refused" : "done");
  send("streamlit:setComponentValue", { value: result, dataType: "json" });
}

function drawPicture(picture) {
  const canvas = $("picture");
  canvas.width = picture.width;
  canvas.height = picture.height;
  canvas.getContext("2d").putImageData(new ImageData(picture.rgba, picture.width, picture.height), 0, 0);
}

// The predicted class's map, rectified and scaled to 0..1, laid over the image (bilinear upsampling by the canvas).
function drawCam(found, picture) {
  $("cam-figure").hidden = !found || !state.args.cam_shape;
  if ($("cam-figure").hidden) { fitHeight(); return; }
  const [h, w] = state.args.cam_shape;
  const classes = state.args.classes;
  const top = found.probabilities.indexOf(Math.max(...found.probabilities));
  const map = new Float32Array(h * w);
  for (let i = 0; i < h * w; i++) map[i] = Math.max(found.cam[i * classes + top], 0);
  const peak = Math.max(...map) || 1;
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  const heat = small.getContext("2d").createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const v = map[i] / peak;
    heat.data.set([255, 255 * (1 - v), 0, 180 * v], i * 4);  // yellow to red, transparent where there is no evidence
  }
  small.getContext("2d").putImageData(heat, 0, 0);
  const canvas = $("cam");
  canvas.width = picture.width; canvas.height = picture.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage($("picture"), 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, 0, 0, picture.width, picture.height);
  fitHeight();
}

function fail(err) {
  status(`This image could not be used: ${err.message || err}`, "error");
}

$("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const picked = performance.now();
  try {
    await onPicture({ ...(await decodeFile(file, state.args)), picked });
  } catch (err) { fail(err); }
  event.target.value = "";  // picking the same file again classifies it again
});

$("camera-start").addEventListener("click", async () => {
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (err) {
    status(`No camera available here (${err.name || err}). "Choose an image" opens the camera on a phone.`, "error");
    return;
  }
  $("video").srcObject = state.stream;
  $("video").hidden = false; $("camera-shoot").hidden = false;
  await $("video").play();
  fitHeight();
});

$("camera-shoot").addEventListener("click", async () => {
  const picked = performance.now();
  const picture = frameFromVideo($("video"), state.args);
  state.stream.getTracks().forEach((track) => track.stop());
  $("video").hidden = true; $("camera-shoot").hidden = true;
  try { await onPicture({ ...picture, picked }); } catch (err) { fail(err); }
});

window.addEventListener("message", (event) => {
  if (event.data.type !== "streamlit:render") return;
  state.args = event.data.args;
  ensureModel().catch(() => {});
  fitHeight();
});

send("streamlit:componentReady", { apiVersion: 1 });
fitHeight();
