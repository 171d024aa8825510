// The chat page of `vl3 serve`. Plain browser JavaScript with no build step and no requests beyond this server,
// so it works offline. The API is stateless: the page keeps the whole conversation, media included as data URLs,
// and sends all of it with every question.

// The server's defaults: images up to 20 MiB, request bodies up to 128 MiB. Every later turn re-sends each file
// base64-encoded (4/3 of its size), so videos are held well under the body limit rather than at the server's own
// 256 MiB video limit.
const MAX_IMAGE_BYTES = 20 * 1024 * 1024;
const MAX_VIDEO_BYTES = 64 * 1024 * 1024;

// Browsers leave `File.type` empty for several video containers (mkv, avi on many systems); the extension decides then.
const IMAGE_TYPES = {
  png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', webp: 'image/webp', gif: 'image/gif',
  bmp: 'image/bmp', tif: 'image/tiff', tiff: 'image/tiff',
};
const VIDEO_TYPES = {
  mp4: 'video/mp4', m4v: 'video/mp4', mov: 'video/quicktime', webm: 'video/webm', mkv: 'video/x-matroska',
  avi: 'video/x-msvideo', mpg: 'video/mpeg', mpeg: 'video/mpeg', ts: 'video/mp2t', '3gp': 'video/3gpp',
  ogv: 'video/ogg', flv: 'video/x-flv', wmv: 'video/x-ms-wmv',
};
const SETTINGS_KEY = 'vl3-chat-settings';
const API_KEY_KEY = 'vl3-chat-api-key';

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const log = $('log');
const form = /** @type {HTMLFormElement} */ ($('composer'));
const prompt = /** @type {HTMLTextAreaElement} */ ($('prompt'));
const fileInput = /** @type {HTMLInputElement} */ ($('file-input'));
const sendButton = /** @type {HTMLButtonElement} */ ($('send'));
const stopButton = /** @type {HTMLButtonElement} */ ($('stop'));
const attachList = $('attachments');
const attachError = $('attach-error');
const overlay = $('drop-overlay');
const settingInputs = {
  max_tokens: /** @type {HTMLInputElement} */ ($('max-tokens')),
  temperature: /** @type {HTMLInputElement} */ ($('temperature')),
  fps: /** @type {HTMLInputElement} */ ($('fps')),
  max_frames: /** @type {HTMLInputElement} */ ($('max-frames')),
};
const apiKeyInput = /** @type {HTMLInputElement} */ ($('api-key'));

/** Messages already answered, in the API's format; a turn joins only once its answer has (at least partly) arrived. */
let history = [];
/** Files attached to the next question: { file, kind: 'image'|'video', mime, url (object URL for the preview) }. */
let pending = [];
/** Object URLs shown in the conversation, released by "New chat". */
let shownUrls = [];
/** The AbortController of the request in flight, if any. */
let controller = null;
/** Bumped by "New chat", so that a request still settling cannot add its turn to the next conversation. */
let conversation = 0;
let modelId;

// ---- model name ----

/** Headers for the API: the key, when the server was started with one (`vl3 serve --api-key`). */
function apiHeaders(extra = {}) {
  const key = apiKeyInput.value.trim();
  return key ? { ...extra, authorization: `Bearer ${key}` } : extra;
}

async function loadModel() {
  const target = $('model-id');
  target.title = '';
  try {
    const res = await fetch('/v1/models', { headers: apiHeaders() });
    if (res.status === 401) {
      target.textContent = 'API key needed (see Settings)';
      /** @type {HTMLDetailsElement} */ (document.querySelector('details.settings')).open = true;
      return;
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const body = await res.json();
    modelId = body?.data?.[0]?.id;
    target.textContent = modelId ?? 'none loaded';
    if (modelId) document.title = `${modelId} · VideoLLaMA3 chat`;
  } catch (e) {
    target.textContent = 'unavailable';
    target.title = `GET /v1/models failed: ${errorText(e)}`;
  }
}

// ---- attachments ----

function classify(file) {
  const ext = (file.name.match(/\.([^.]+)$/)?.[1] ?? '').toLowerCase();
  const type = file.type.toLowerCase();
  if (Object.values(IMAGE_TYPES).includes(type)) return { kind: 'image', mime: type };
  if (type.startsWith('video/')) return { kind: 'video', mime: type };
  if (type === '' || type === 'application/octet-stream') {
    if (IMAGE_TYPES[ext]) return { kind: 'image', mime: IMAGE_TYPES[ext] };
    if (VIDEO_TYPES[ext]) return { kind: 'video', mime: VIDEO_TYPES[ext] };
  }
  return undefined;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function addFiles(files) {
  const problems = [];
  for (const file of files) {
    const c = classify(file);
    if (!c) {
      problems.push(`${file.name}: not a supported image or video (${file.type || 'unknown type'}). Images: PNG, JPEG, WebP, GIF, BMP, TIFF; videos: MP4, WebM, MKV, MOV, AVI…`);
      continue;
    }
    const limit = c.kind === 'image' ? MAX_IMAGE_BYTES : MAX_VIDEO_BYTES;
    if (file.size > limit) {
      problems.push(`${file.name} is too large (${formatBytes(file.size)}); ${c.kind}s can be at most ${formatBytes(limit)}.`);
      continue;
    }
    if (file.size === 0) {
      problems.push(`${file.name} is empty.`);
      continue;
    }
    pending.push({ file, ...c, url: URL.createObjectURL(file) });
  }
  showAttachError(problems.join('\n'));
  renderAttachments();
}

function showAttachError(message) {
  attachError.textContent = message;
  attachError.hidden = !message;
}

function preview(item, controls) {
  let media;
  if (item.kind === 'image') {
    media = document.createElement('img');
    media.alt = item.file.name;
  } else {
    media = document.createElement('video');
    media.muted = true;
    media.preload = 'metadata';
    media.controls = controls;
    media.setAttribute('aria-label', item.file.name);
  }
  media.src = item.url;
  media.className = 'thumb';
  // A file the browser cannot show (a TIFF, an MKV, a corrupt file) gets a plain tile; its name is shown beside it.
  media.addEventListener(
    'error',
    () => {
      const tile = document.createElement('span');
      tile.className = 'thumb broken';
      tile.textContent = item.kind === 'image' ? 'no preview' : 'video';
      media.replaceWith(tile);
    },
    { once: true },
  );
  return media;
}

function renderAttachments() {
  attachList.replaceChildren(
    ...pending.map((item) => {
      const li = document.createElement('li');
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = `${item.file.name} · ${formatBytes(item.file.size)}`;
      const remove = document.createElement('button');
      remove.type = 'button';
      remove.className = 'remove';
      remove.textContent = '×';
      remove.setAttribute('aria-label', `Remove ${item.file.name}`);
      remove.addEventListener('click', () => {
        URL.revokeObjectURL(item.url);
        pending = pending.filter((p) => p !== item);
        renderAttachments();
        prompt.focus();
      });
      li.append(preview(item, false), name, remove);
      return li;
    }),
  );
  attachList.hidden = pending.length === 0;
}

function readDataUrl(item) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    // FileReader labels the data with File.type, which may be empty; the server sniffs bytes, but a right label helps.
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^;,]*/, `data:${item.mime}`));
    reader.onerror = () => reject(reader.error ?? new Error(`could not read ${item.file.name}`));
    reader.readAsDataURL(item.file);
  });
}

// ---- settings ----

function readSettings() {
  const out = {};
  for (const [key, input] of Object.entries(settingInputs)) {
    const v = input.value.trim();
    if (v !== '' && Number.isFinite(Number(v))) out[key] = Number(v);
  }
  return out;
}

function restoreSettings() {
  try {
    const saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? '{}');
    for (const [key, input] of Object.entries(settingInputs)) if (saved[key] !== undefined) input.value = String(saved[key]);
    apiKeyInput.value = sessionStorage.getItem(API_KEY_KEY) ?? '';
  } catch {
    // storage unavailable (private mode, file://): settings just do not persist
  }
}

function saveSettings() {
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(readSettings()));
    // The key lives only as long as the tab: kept out of the long-lived storage that other settings use.
    sessionStorage.setItem(API_KEY_KEY, apiKeyInput.value.trim());
  } catch {
    // as above
  }
}

// ---- conversation display ----

function scrollToEnd(force) {
  const nearEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  if (force || nearEnd) log.scrollTop = log.scrollHeight;
}

function renderUser(text, items) {
  $('empty-hint').hidden = true;
  const article = document.createElement('article');
  article.className = 'msg user';
  article.setAttribute('aria-label', 'You');
  if (items.length) {
    const media = document.createElement('div');
    media.className = 'media';
    for (const item of items) {
      const figure = document.createElement('figure');
      const caption = document.createElement('figcaption');
      caption.textContent = item.file.name;
      figure.append(preview(item, true), caption);
      media.append(figure);
      shownUrls.push(item.url);
    }
    article.append(media);
  }
  if (text) {
    const p = document.createElement('div');
    p.className = 'text';
    p.textContent = text;
    article.append(p);
  }
  log.append(article);
  scrollToEnd(true);
  return article;
}

function renderAssistant() {
  const article = document.createElement('article');
  article.className = 'msg assistant';
  article.setAttribute('aria-label', 'Assistant');
  const text = document.createElement('div');
  text.className = 'text answer';
  const footer = document.createElement('footer');
  article.append(text, footer);
  log.append(article);
  scrollToEnd(true);
  return { article, text, footer };
}

function note(footer, message, kind = 'note') {
  const p = document.createElement('p');
  p.className = kind;
  if (kind === 'error') p.setAttribute('role', 'alert');
  p.textContent = message;
  footer.append(p);
}

const num = (n, digits = 0) => Number(n).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

function renderStats(footer, s) {
  const dl = document.createElement('dl');
  dl.className = 'stats';
  dl.setAttribute('aria-label', 'Answer statistics');
  const add = (key, label, value, shown, title) => {
    if (value === undefined || value === null || Number.isNaN(value)) return;
    const div = document.createElement('div');
    const dt = document.createElement('dt');
    dt.textContent = label;
    const dd = document.createElement('dd');
    dd.textContent = shown;
    dd.dataset.stat = key;
    dd.dataset.value = String(value);
    if (title) div.title = title;
    div.append(dt, dd);
    dl.append(div);
  };
  const u = s.usage ?? {};
  const t = s.timings ?? {};
  add('ttft_ms', 'first token', s.ttftMs, s.ttftMs === undefined ? '' : `${num(s.ttftMs / 1000, 2)} s`, 'Time to first token, measured in this page (includes upload and media decoding)');
  // The server's decode rate leaves out the first token, which prefill produced; the page's own estimate is the fallback.
  const tps = t.decode_tokens_per_second ?? s.pageTokensPerSecond;
  add('tokens_per_second', 'speed', tps, tps === undefined ? '' : `${num(tps, 1)} tok/s`, 'Generation speed (decode)');
  add('prompt_tokens', 'prompt', u.prompt_tokens, `${num(u.prompt_tokens ?? 0)} tok`, 'Prompt tokens, the visual ones included');
  add('visual_tokens', 'visual', u.visual_tokens, `${num(u.visual_tokens ?? 0)} tok`, 'Visual tokens in the prompt');
  add('completion_tokens', 'answer', u.completion_tokens, `${num(u.completion_tokens ?? 0)} tok`, 'Generated tokens');
  add('prefill_ms', 'prefill', t.prefill_ms, `${num(t.prefill_ms ?? 0)} ms`,
    t.prefill_tokens_per_second ? `Server prefill, ${num(t.prefill_tokens_per_second)} tok/s` : 'Server prefill');
  add('decode_ms', 'decode', t.decode_ms, `${num(t.decode_ms ?? 0)} ms`, 'Server decode');
  add('total_ms', 'server total', t.total_ms, `${num(t.total_ms ?? 0)} ms`, 'Server time for the whole request, media processing included');
  footer.append(dl);
}

// ---- the request ----

/** The `data:` payloads of a server-sent event stream, one per event. */
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = /\r?\n\r?\n/.exec(buffer))) {
        const event = buffer.slice(0, end.index);
        buffer = buffer.slice(end.index + end[0].length);
        const data = event
          .split(/\r?\n/)
          .filter((line) => line.startsWith('data:'))
          .map((line) => line.slice(line.startsWith('data: ') ? 6 : 5))
          .join('\n');
        if (data) yield data;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function errorText(e) {
  return e instanceof Error ? e.message : String(e);
}

async function responseError(res) {
  const raw = await res.text().catch(() => '');
  let message = raw.trim();
  try {
    const body = JSON.parse(raw);
    message = body?.error?.message ?? body?.message ?? message;
  } catch {
    // not JSON: the raw text is the message
  }
  return new Error(`${message || res.statusText || 'request failed'} (HTTP ${res.status})`);
}

function setBusy(busy) {
  sendButton.hidden = busy;
  sendButton.disabled = busy;
  stopButton.hidden = !busy;
  stopButton.disabled = !busy;
  form.setAttribute('aria-busy', String(busy));
}

async function send() {
  if (controller) return;
  const text = prompt.value.trim();
  if (!text && pending.length === 0) {
    prompt.focus();
    return;
  }
  const items = pending;
  const inConversation = conversation;
  // Busy from here: reading a large video into a data URL takes a moment, and a second Enter must not send twice.
  const mine = new AbortController();
  controller = mine;
  setBusy(true);
  let parts;
  try {
    parts = await Promise.all(
      items.map(async (item) =>
        item.kind === 'image'
          ? { type: 'image_url', image_url: { url: await readDataUrl(item) } }
          : { type: 'video_url', video_url: { url: await readDataUrl(item) } },
      ),
    );
  } catch (e) {
    showAttachError(`Could not read a file: ${errorText(e)}`);
    release(mine);
    return;
  }
  if (mine.signal.aborted) return; // "New chat" while the files were being read
  if (text) parts.push({ type: 'text', text });
  pending = [];
  renderAttachments();
  showAttachError('');
  prompt.value = '';
  autosize();

  const user = { role: 'user', content: parts };
  const userView = renderUser(text, items);
  const view = renderAssistant();
  const settings = readSettings();
  const body = { model: modelId, messages: [...history, user], stream: true, stream_options: { include_usage: true } };
  if (settings.max_tokens !== undefined) body.max_tokens = settings.max_tokens;
  if (settings.temperature !== undefined) body.temperature = settings.temperature;
  if (settings.fps !== undefined) body.fps = settings.fps;
  if (settings.max_frames !== undefined) body.max_frames = settings.max_frames;

  view.article.setAttribute('aria-busy', 'true');
  const started = performance.now();
  let firstAt;
  let answer = '';
  let usage;
  let timings;
  let finish;
  let done = false;
  try {
    const res = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: apiHeaders({ 'content-type': 'application/json', accept: 'text/event-stream' }),
      body: JSON.stringify(body),
      signal: mine.signal,
    });
    if (!res.ok) throw await responseError(res);
    if (!res.body) throw new Error('the server sent no response body');
    for await (const data of sseData(res.body)) {
      if (data === '[DONE]') {
        done = true;
        break;
      }
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        throw new Error(`the server sent an unreadable event: ${data.slice(0, 200)}`);
      }
      if (chunk.error) throw new Error(chunk.error.message ?? JSON.stringify(chunk.error));
      const choice = chunk.choices?.[0];
      const delta = choice?.delta?.content;
      if (delta) {
        firstAt ??= performance.now();
        answer += delta;
        view.text.textContent = answer;
        scrollToEnd(false);
      }
      if (choice?.finish_reason) finish = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
      if (chunk.timings) timings = chunk.timings;
    }
    if (!done && !finish) throw new Error('the connection closed before the answer was complete');
    const ended = performance.now();
    if (inConversation === conversation) history.push(user, { role: 'assistant', content: answer });
    if (!answer) note(view.footer, 'The model gave an empty answer.');
    if (finish === 'length') note(view.footer, `The answer reached the token limit${body.max_tokens ? ` (${body.max_tokens})` : ''}.`);
    const generated = usage?.completion_tokens;
    renderStats(view.footer, {
      usage,
      timings,
      ttftMs: firstAt === undefined ? undefined : firstAt - started,
      pageTokensPerSecond: generated > 1 && firstAt !== undefined && ended > firstAt ? ((generated - 1) * 1000) / (ended - firstAt) : undefined,
    });
  } catch (e) {
    const aborted = mine.signal.aborted;
    if (aborted && answer) {
      // Keep what arrived, so the next question can refer to it, as chat apps do.
      if (inConversation === conversation) history.push(user, { role: 'assistant', content: answer });
      note(view.footer, 'Stopped.');
    } else {
      // A turn that got no answer is left out of the conversation, so a bad file does not fail every later turn.
      userView.classList.add('dropped');
      userView.title = 'Not part of the conversation sent with later questions';
      if (aborted) note(view.footer, 'Stopped before the answer began; this question is left out of the conversation.');
      else note(view.footer, `Error: ${errorText(e)}`, 'error');
      if (!answer) view.text.remove();
    }
  } finally {
    view.article.removeAttribute('aria-busy');
    if (release(mine)) {
      scrollToEnd(false);
      prompt.focus();
    }
  }
}

/**
 * Ends the busy state of the request `mine`, unless "New chat" already did and another request may be running: a
 * request that settles late must not touch the next one's state. True when `mine` was still the current request.
 */
function release(mine) {
  if (controller !== mine) return false;
  controller = null;
  setBusy(false);
  return true;
}

function newChat() {
  // The request in flight is cancelled and forgotten at once: the page is ready for the next question now, not when
  // the cancelled request has finished settling.
  if (controller) {
    controller.abort();
    release(controller);
  }
  conversation++;
  history = [];
  for (const item of pending) URL.revokeObjectURL(item.url);
  for (const url of shownUrls) URL.revokeObjectURL(url);
  pending = [];
  shownUrls = [];
  renderAttachments();
  showAttachError('');
  const hint = $('empty-hint');
  hint.hidden = false;
  log.replaceChildren(hint);
  prompt.value = '';
  autosize();
  prompt.focus();
}

// ---- wiring ----

function autosize() {
  prompt.style.height = 'auto';
  prompt.style.height = `${Math.min(prompt.scrollHeight, 240)}px`;
}

form.addEventListener('submit', (e) => {
  e.preventDefault();
  void send();
});
prompt.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    void send();
  } else if (e.key === 'Escape' && controller) {
    controller.abort();
  }
});
prompt.addEventListener('input', autosize);
stopButton.addEventListener('click', () => controller?.abort());
$('new-chat').addEventListener('click', newChat);
fileInput.addEventListener('change', () => {
  addFiles([...(fileInput.files ?? [])]);
  // Cleared so that picking the same file again (after removing it) fires `change` again.
  fileInput.value = '';
});
for (const input of Object.values(settingInputs)) input.addEventListener('change', saveSettings);
apiKeyInput.addEventListener('change', () => {
  saveSettings();
  void loadModel();
});

document.addEventListener('paste', (e) => {
  const files = [...(e.clipboardData?.files ?? [])];
  if (files.length === 0) return;
  e.preventDefault();
  addFiles(files);
});

// dragenter/dragleave fire for every child crossed, so a depth count tells when the pointer really left the page.
let dragDepth = 0;
const carriesFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes('Files');
document.addEventListener('dragenter', (e) => {
  if (!carriesFiles(e)) return;
  e.preventDefault();
  dragDepth++;
  overlay.hidden = false;
});
document.addEventListener('dragover', (e) => {
  if (!carriesFiles(e)) return;
  e.preventDefault();
  e.dataTransfer.dropEffect = 'copy';
});
document.addEventListener('dragleave', (e) => {
  if (!carriesFiles(e)) return;
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) overlay.hidden = true;
});
document.addEventListener('drop', (e) => {
  if (!carriesFiles(e)) return;
  e.preventDefault();
  dragDepth = 0;
  overlay.hidden = true;
  addFiles([...(e.dataTransfer?.files ?? [])]);
});

restoreSettings();
renderAttachments();
setBusy(false);
void loadModel();
prompt.focus();
