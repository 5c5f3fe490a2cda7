// The callkit web phone: sign in, call one or several users, answer, video tiles with names,
// live volume bars and quality badges, mute / camera / switch / invite / hang up, a call
// timer and an event log. Everything goes through callkit.js; the page never holds the
// secret key (it asks POST /dev/usersig when the server runs with --dev-login, else the
// user pastes a UserSig minted by their backend).

import { CallEngine, CallMediaType, EVENT_NAMES } from "/sdk/callkit.js";

const $ = (id) => document.getElementById(id);
const QUALITY = ["?", "excellent", "good", "poor", "bad", "very bad", "down"];
const PERIODIC = new Set(["onUserVoiceVolumeChanged", "onUserNetworkQualityChanged"]);

let engine = null;
let timer = null;
const tiles = new Map(); // userId -> tile element
const streams = new Map(); // userId -> MediaStream
const nicknames = new Map();

function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toISOString().slice(11, 23)} ${text}`;
  const list = $("log");
  list.prepend(li);
  while (list.children.length > 300) list.lastChild.remove();
}

function show(section) {
  for (const id of ["signin", "dial", "incoming", "in-call"]) $(id).hidden = id !== section;
}

async function mintSig(userId) {
  const r = await fetch("/dev/usersig", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ userId }),
  });
  if (r.status === 404 || r.status === 405) return null; // no --dev-login: paste a sig
  const data = await r.json();
  if (!r.ok) throw new Error(`${data.message} (code ${data.code})`);
  return data;
}

async function signIn(ev) {
  ev.preventDefault();
  const userId = $("user-id").value.trim();
  const button = $("signin-button");
  button.disabled = true;
  try {
    let creds = null;
    if ($("manual-sig").hidden) {
      creds = await mintSig(userId);
      if (!creds) {
        $("manual-sig").hidden = false;
        log("this server has no dev login: paste a UserSig");
        return;
      }
    } else {
      creds = { sdkAppId: Number($("sdk-app-id").value), userId, userSig: $("user-sig").value.trim() };
    }
    engine = CallEngine.create();
    for (const name of EVENT_NAMES) engine.on(name, (res) => onEvent(name, res));
    engine.onStream((user, stream) => { streams.set(user, stream); attachStream(user); });
    await engine.init(creds.sdkAppId, creds.userId, creds.userSig);
    const nickname = $("nickname").value.trim();
    if (nickname) await engine.setSelfInfo(nickname, "");
    $("me").textContent = nickname ? `${nickname} (${userId})` : userId;
    log(`signed in as ${userId}`);
    show("dial");
  } catch (e) {
    log(`sign-in failed: ${e.message}`);
    engine = null;
  } finally {
    button.disabled = false;
  }
}

async function act(what, fn) {
  try {
    await fn();
  } catch (e) {
    log(`${what} failed: ${e.message}`);
  }
}

function dial(ev) {
  ev.preventDefault();
  const media = Number(ev.submitter?.dataset.media || CallMediaType.AUDIO);
  const ids = $("callees").value.split(",").map((s) => s.trim()).filter(Boolean);
  const group = $("group-id").value.trim();
  act("call", async () => {
    if (ids.length === 1 && !group) await engine.call(ids[0], media);
    else await engine.groupCall(ids, group || `group-${Date.now()}`, media);
    enterCall("calling…");
  });
}

function join(ev) {
  ev.preventDefault();
  const room = Number($("join-room").value);
  act("join", async () => {
    await engine.joinInGroupCall(room, $("group-id").value.trim(), CallMediaType.AUDIO);
    enterCall("joining…");
  });
}

function enterCall(status) {
  show("in-call");
  $("call-status").textContent = status;
  renderTiles();
  updateControls();
}

function leaveCall() {
  clearInterval(timer);
  timer = null;
  $("timer").hidden = true;
  for (const tile of tiles.values()) tile.remove();
  tiles.clear();
  streams.clear();
  show(engine ? "dial" : "signin");
}

function startTimer() {
  const begun = Date.now();
  $("timer").hidden = false;
  clearInterval(timer);
  const tick = () => {
    const s = Math.floor((Date.now() - begun) / 1000);
    $("timer").textContent = `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
  };
  tick();
  timer = setInterval(tick, 1000);
}

function tileFor(user) {
  let tile = tiles.get(user);
  if (tile) return tile;
  tile = document.createElement("div");
  tile.className = "tile";
  tile.dataset.user = user;
  tile.innerHTML = `<video autoplay playsinline muted></video><span class="state"></span>
    <div class="label"><span class="name"></span><span class="volume"><span></span></span>
    <span class="quality q0">?</span></div>`;
  tile.querySelector(".name").textContent = user === engine.userId ? `${nameOf(user)} (you)` : nameOf(user);
  $("tiles").append(tile);
  tiles.set(user, tile);
  attachStream(user);
  return tile;
}

function nameOf(user) {
  return nicknames.get(user) || user;
}

function attachStream(user) {
  const tile = tiles.get(user);
  const stream = streams.get(user);
  if (!tile || !stream) return;
  const video = tile.querySelector("video");
  if (video.srcObject !== stream) {
    video.srcObject = stream;
    video.play().catch(() => {});
  }
}

// one tile per member (you first); ringing members are shown dimmed
function renderTiles() {
  if (!engine || engine.callState === "idle") return;
  const members = engine.members();
  for (const m of members) if (m.nickname) nicknames.set(m.userId, m.nickname);
  const wanted = new Set([engine.userId, ...members.map((m) => m.userId)]);
  for (const [user, tile] of tiles) {
    if (!wanted.has(user)) { tile.remove(); tiles.delete(user); }
  }
  tileFor(engine.userId);
  for (const m of members) {
    if (m.userId === engine.userId) continue;
    const tile = tileFor(m.userId);
    tile.classList.toggle("ringing", m.state !== "joined");
    tile.querySelector(".state").textContent = m.state === "joined" ? "" : "ringing…";
    tile.querySelector(".name").textContent = nameOf(m.userId);
  }
}

function updateControls() {
  if (!engine) return;
  const video = engine.callCtx?.mediaType === CallMediaType.VIDEO;
  $("mic").textContent = engine.micOpen ? "Mute" : "Unmute";
  $("camera").textContent = engine.cameraOpen ? "Camera off" : "Camera on";
  $("camera").disabled = !video;
  $("switch").textContent = video ? "Switch to audio" : "Switch to video";
  $("switch").disabled = engine.callState !== "connected";
}

function onEvent(name, res) {
  if (!PERIODIC.has(name)) log(`${name} ${JSON.stringify(res)}`);
  switch (name) {
    case "onCallReceived":
      $("incoming-title").textContent = `${res.callerId} is calling (${res.callMediaType === 2 ? "video" : "audio"})`;
      $("incoming-detail").textContent = res.groupId
        ? `group ${res.groupId} with ${res.calleeIdList.join(", ")}`
        : res.userData;
      show("incoming");
      break;
    case "onCallBegin":
      $("call-status").textContent = `room ${res.roomID}`;
      enterCall(`room ${res.roomID}`);
      startTimer();
      break;
    case "onUserJoin":
    case "onUserLeave":
    case "onUserReject":
    case "onUserNoResponse":
    case "onUserLineBusy":
      renderTiles();
      break;
    case "onCallMediaTypeChanged":
      updateControls();
      break;
    case "onUserVoiceVolumeChanged":
      for (const [user, volume] of Object.entries(res.volumeMap)) {
        const bar = tiles.get(user)?.querySelector(".volume span");
        if (bar) bar.style.width = `${volume}%`;
        if (tiles.get(user)) tiles.get(user).dataset.volume = volume;
      }
      break;
    case "onUserNetworkQualityChanged":
      for (const { userId, quality } of res.networkQualityList) {
        const badge = tiles.get(userId)?.querySelector(".quality");
        if (!badge) continue;
        badge.textContent = QUALITY[quality] ?? "?";
        badge.className = `quality q${quality}`;
      }
      break;
    case "onCallEnd":
    case "onCallCancelled":
      leaveCall();
      break;
    case "onKickedOffline":
    case "onUserSigExpired":
      engine = null;
      leaveCall();
      $("me").textContent = "signed out";
      break;
    case "onError":
      if (engine && engine.callState === "idle" && !$("in-call").hidden) leaveCall();
      break;
  }
}

$("signin-form").addEventListener("submit", signIn);
$("dial-form").addEventListener("submit", dial);
$("join-form").addEventListener("submit", join);
$("accept").onclick = () => act("accept", async () => { await engine.accept(); enterCall("connecting…"); });
$("reject").onclick = () => act("reject", () => engine.reject());
$("hangup").onclick = () => act("hang up", () => engine.hangup());
$("mic").onclick = () => act("microphone", async () => {
  await (engine.micOpen ? engine.closeMicrophone() : engine.openMicrophone());
  updateControls();
});
$("camera").onclick = () => act("camera", async () => {
  await (engine.cameraOpen ? engine.closeCamera() : engine.openCamera());
  updateControls();
});
$("switch").onclick = () => act("switch", () =>
  engine.switchCallMediaType(engine.callCtx.mediaType === 2 ? 1 : 2));
$("invite").onclick = () => act("invite", () =>
  engine.inviteUser($("invite-ids").value.split(",").map((s) => s.trim()).filter(Boolean)));
$("signout").onclick = () => act("sign out", async () => {
  await engine.destroy();
  engine = null;
  $("me").textContent = "signed out";
  show("signin");
});
window.phone = { get engine() { return engine; }, tiles };
