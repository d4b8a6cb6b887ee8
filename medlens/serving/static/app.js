/* medlens web page: upload an image (or pick a PACS study), show the finding with the heatmap, or a
   segmentation's mask over the image (coloured per segment, a slice scroller for volumes) with its measurements.
   Every API call sends the key from this tab (sessionStorage) as X-API-Key when one is set;
   images are fetched with the key and shown from blob URLs. */
"use strict";

const $ = (id) => document.getElementById(id);
const state = { objectUrls: [], sliceUrls: [], sliceRequest: 0 };

function apiKey() { return sessionStorage.getItem("medlens-key") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey()) headers["X-API-Key"] = apiKey();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let detail = response.statusText;
    try { const body = await response.json(); detail = body.detail || body.error || detail; } catch (_) { /* not JSON */ }
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return response;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function pct(x) { return (100 * x).toFixed(1) + " %"; }

async function blobUrl(path) {
  const url = URL.createObjectURL(await (await api(path)).blob());
  state.objectUrls.push(url);
  return url;
}

async function showPrediction(p) {
  state.objectUrls.forEach((u) => URL.revokeObjectURL(u));
  state.objectUrls = [];
  $("result").hidden = false;
  const outside = (p.out_of_scope || []).length > 0;
  $("refer").hidden = !p.abstain;
  $("refer-title").textContent = outside
    ? "Not assessed: this image is not what the model was made for. Refer to a radiologist."
    : "Refer to a radiologist: the model is not sure enough to give a finding.";
  $("refer-reason").textContent = p.abstain && !outside ? (p.abstain_reason || "") : "";
  const reasons = $("scope-reasons");
  reasons.replaceChildren();
  for (const r of p.out_of_scope || []) {
    const li = document.createElement("li");
    li.textContent = r.reason;
    reasons.append(li);
  }
  $("finding").textContent = outside ? `not assessed (the model would say ${p.finding})` : p.finding;
  const segmentation = p.task === "segmentation";
  $("probability-name").textContent = segmentation ? "Mean probability" : "Probability";
  $("probability").textContent = pct(p.confidence);
  $("uncertainty").textContent = `${p.uncertainty.toFixed(3)} (${p.uncertainty_method})`;
  $("used-model").textContent = p.model;
  $("prediction-id").textContent = p.id;
  const tbody = $("probabilities").querySelector("tbody");
  tbody.replaceChildren();
  for (const [name, prob] of Object.entries(p.probabilities)) {
    const tr = document.createElement("tr");
    tr.append(cell(name), cell(pct(prob)));
    tbody.append(tr);
  }
  $("probabilities").hidden = segmentation;
  showMeasurements(segmentation ? p.measurements || [] : null);
  showLegend(segmentation ? p.segments || [] : null);
  const base = `/v1/predictions/${p.id}`;
  const layer = segmentation || p.has_heatmap;
  $("heat-layer").hidden = !layer;
  $("opacity-box").hidden = !layer;
  $("opacity-label").textContent = segmentation ? "Mask opacity" : "Heatmap opacity";
  $("slice-box").hidden = !(segmentation && p.slices > 1);
  if (segmentation) {
    $("slice").max = String(p.slices - 1);
    $("slice").value = String(p.slice);
    $("slice").dataset.prediction = p.id;
    await showSlice(p.id, p.slice, p.slices);
  } else {
    $("base-image").src = await blobUrl(`${base}/image.png`);
    if (p.has_heatmap) $("heat-layer").src = await blobUrl(`${base}/heatmap.png?layer=heatmap`);
  }
  $("link-sr").hidden = p.source.kind !== "dicom";
  $("link-seg").hidden = !(segmentation && p.source.kind === "dicom");
  $("link-nifti").hidden = !segmentation;
  $("link-fhir").dataset.path = `${base}/fhir`;
  $("link-sr").dataset.path = `${base}/sr`;
  $("link-seg").dataset.path = `${base}/seg`;
  $("link-nifti").dataset.path = `${base}/mask.nii.gz`;
  document.body.dataset.prediction = p.id;
}

/* Slice k of a segmentation: the grey slice and its mask layer; only the latest request is shown. */
async function showSlice(id, k, slices) {
  const request = ++state.sliceRequest;
  const base = `/v1/predictions/${id}`;
  const [image, mask] = await Promise.all([api(`${base}/image.png?slice=${k}`), api(`${base}/mask.png?slice=${k}`)]);
  const urls = [URL.createObjectURL(await image.blob()), URL.createObjectURL(await mask.blob())];
  if (request !== state.sliceRequest) { urls.forEach((u) => URL.revokeObjectURL(u)); return; }
  state.sliceUrls.forEach((u) => URL.revokeObjectURL(u));
  state.sliceUrls = urls;
  $("base-image").src = urls[0];
  $("heat-layer").src = urls[1];
  $("slice-value").textContent = `${k + 1} / ${slices}`;
  document.body.dataset.slice = String(k);
}

function showMeasurements(items) {
  $("measurements").hidden = items === null;
  const tbody = $("measurements").querySelector("tbody");
  tbody.replaceChildren();
  for (const m of items || []) {
    const tr = document.createElement("tr");
    const value = `${Number(m.value.toPrecision(6))} ${m.unit}`;
    tr.append(cell(m.label), cell(m.region ? `${m.quantity} (${m.region})` : m.quantity), cell(value));
    tbody.append(tr);
  }
}

function showLegend(segments) {
  $("legend").hidden = segments === null;
  const legend = $("legend");
  legend.replaceChildren();
  for (const s of segments || []) {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = s.colour;
    li.append(swatch, document.createTextNode(s.label));
    legend.append(li);
  }
}

async function changeSlice() {
  const slider = $("slice");
  try {
    await showSlice(slider.dataset.prediction, Number(slider.value), Number(slider.max) + 1);
  } catch (e) { setStatus(e.message, true); }
}

function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }

async function download(event) {
  event.preventDefault();
  const path = event.target.dataset.path;
  if (!path) return;
  try {
    const url = await blobUrl(path);
    const a = document.createElement("a");
    a.href = url;
    const names = { sr: "medlens-sr.dcm", seg: "medlens-seg.dcm", fhir: "medlens-fhir.json", "mask.nii.gz": "medlens-mask.nii.gz" };
    a.download = names[path.split("/").pop()];
    a.click();
  } catch (e) { setStatus(e.message, true); }
}

async function submitUpload(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) { setStatus("choose a file first", true); return; }
  const form = new FormData();
  form.append("file", file);
  await predict(`/v1/predictions?explain=${$("explain").checked}`, { method: "POST", body: form });
}

async function submitStudy() {
  const uid = $("pacs-studies").value;
  if (!uid) return;
  await predict(`/v1/predictions?explain=${$("explain").checked}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ study_instance_uid: uid }),
  });
}

async function predict(path, options) {
  $("submit").disabled = true;
  setStatus("analysing ...");
  try {
    const p = await (await api(path, options)).json();
    await showPrediction(p);
    setStatus("done");
    await loadRecent();
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    $("submit").disabled = false;
  }
}

async function loadRecent() {
  const tbody = $("recent").querySelector("tbody");
  try {
    const items = await (await api("/v1/predictions?limit=20")).json();
    tbody.replaceChildren();
    for (const p of items) {
      const tr = document.createElement("tr");
      if (p.abstain) tr.className = "abstain";
      const button = document.createElement("button");
      button.textContent = "show";
      button.addEventListener("click", async () => {
        try { await showPrediction(await (await api(`/v1/predictions/${p.id}`)).json()); } catch (e) { setStatus(e.message, true); }
      });
      const actions = document.createElement("td");
      actions.append(button);
      tr.append(cell(p.created.replace("T", " ").replace("+00:00", " UTC")), cell(p.source.kind),
                cell((p.out_of_scope || []).length ? "not assessed (refer)" : p.abstain ? `${p.finding} (refer)` : p.finding), cell(p.confidence.toFixed(3)), actions);
      tbody.append(tr);
    }
  } catch (e) {
    if (e.status === 401) setStatus("enter an API key to use this service", true);
  }
}

async function loadConfig() {
  try {
    const config = await (await api("/v1/config")).json();
    const models = await (await api("/v1/models")).json();
    $("model").textContent = models.map((m) => `${m.id} (${m.sha256.slice(0, 12)})`).join(", ");
    if (config.pacs) {
      $("pacs").hidden = false;
      const studies = await (await api("/v1/pacs/studies")).json();
      const select = $("pacs-studies");
      select.replaceChildren();
      for (const s of studies) {
        const option = document.createElement("option");
        option.value = s.study_instance_uid;
        option.textContent = `${s.date || "?"} ${s.modalities.join("/")} ${s.description || s.study_instance_uid}`;
        select.append(option);
      }
    }
  } catch (e) {
    if (e.status === 401) { $("key-box").open = true; setStatus("enter an API key to use this service", true); }
    else setStatus(e.message, true);
  }
}

function init() {
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("medlens-key", $("api-key").value.trim());
    setStatus("");
    loadConfig();
    loadRecent();
  });
  $("opacity").addEventListener("input", () => {
    const v = Number($("opacity").value);
    $("heat-layer").style.opacity = String(v / 100);
    $("opacity-value").textContent = `${v}%`;
  });
  $("slice").addEventListener("input", changeSlice);
  $("upload-form").addEventListener("submit", submitUpload);
  $("pacs-submit").addEventListener("click", submitStudy);
  $("link-fhir").addEventListener("click", download);
  $("link-sr").addEventListener("click", download);
  $("link-seg").addEventListener("click", download);
  $("link-nifti").addEventListener("click", download);
  loadConfig();
  loadRecent();
}

document.addEventListener("DOMContentLoaded", init);
