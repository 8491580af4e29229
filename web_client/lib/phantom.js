/**
 * Synthetic ultrasound "phantom" video source, so anyone can try a session without a probe.
 * The top 64 rows carry a "DEMO PHANTOM" banner: exactly the rows the server's device profile
 * "probelink / Synthetic phantom" masks as burned-in text (at 640x480 and 1280x720), so a
 * capture exercises the same masking path as a real scanner's patient header.
 */

export const PHANTOM_DEVICE = { manufacturer: "probelink", model: "Synthetic phantom" };

const BANNER = 64, TILE = 256, DEPTH_CM = 12;
const LEFT = Math.PI / 2 + (36 * Math.PI) / 180, RIGHT = Math.PI / 2 - (36 * Math.PI) / 180;
// Tissue layers: [depth fraction, thickness fraction, brightness].
const LAYERS = [[0.05, 0.02, 1], [0.24, 0.03, 0.7], [0.42, 0.015, 0.8], [0.8, 0.04, 0.6]];

// Speckle is Rayleigh-distributed and smeared laterally, like a real B-mode image; computing it
// once into four tiles keeps each frame to a handful of canvas fills.
function noiseTiles(count) {
  return Array.from({ length: count }, () => {
    const tile = Object.assign(document.createElement("canvas"), { width: TILE, height: TILE });
    const tctx = tile.getContext("2d");
    const img = tctx.createImageData(TILE, TILE);
    const raw = new Float32Array(TILE * TILE);
    for (let i = 0; i < raw.length; i++) raw[i] = Math.sqrt(-2 * Math.log(1 - Math.random()));
    for (let i = 0; i < raw.length; i++) {
      const row = i - (i % TILE), col = i % TILE;
      const left = raw[row + ((col + TILE - 1) % TILE)], right = raw[row + ((col + 1) % TILE)];
      const v = Math.min(255, 62 * (left + 2 * raw[i] + right) / 4);
      img.data.set([v, v, v, 255], i * 4);
    }
    tctx.putImageData(img, 0, 0);
    return tctx.createPattern(tile, "repeat");
  });
}

export function phantomStream({ width = 640, height = 480, fps = 30 } = {}) {
  const canvas = Object.assign(document.createElement("canvas"), { width, height });
  const ctx = canvas.getContext("2d");
  const patterns = noiseTiles(4);
  const apex = { x: width / 2, y: BANNER + 6 };
  const depth = height - apex.y - 26, cm = depth / DEPTH_CM;
  const fontPx = Math.max(11, Math.round(height / 40)), small = `${fontPx}px sans-serif`;
  let frame = 0;

  // A radial darkening: stops are [offset, black opacity].
  function shade(x, y, r, stops) {
    const g = ctx.createRadialGradient(x, y, 0, x, y, r);
    for (const [at, a] of stops) g.addColorStop(at, `rgba(0,0,0,${a})`);
    ctx.fillStyle = g;
    ctx.fillRect(x - r, y - r, 2 * r, 2 * r);
  }

  function draw() {
    const t = performance.now() / 1000;
    // A new tile every 250 ms: speckle that boils at the frame rate looks like TV static and
    // costs the video encoder far more bitrate than a real, mostly still, probe image.
    const speckle = patterns[Math.floor((frame++ * 4) / fps) % patterns.length];
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);

    ctx.save();
    ctx.beginPath(); // the sector, with the small curved footprint of a phased-array probe
    ctx.arc(apex.x, apex.y, 12, RIGHT, LEFT);
    ctx.arc(apex.x, apex.y, depth, LEFT, RIGHT, true);
    ctx.clip();
    ctx.fillStyle = speckle;
    ctx.fillRect(0, apex.y, width, depth);
    // Brighter speckled tissue layers (skin line first), added on top of the base speckle.
    ctx.globalCompositeOperation = "lighter";
    for (const [at, thick, alpha] of LAYERS) {
      ctx.globalAlpha = alpha;
      ctx.fillRect(0, apex.y + depth * at, width, depth * thick);
    }
    const cx = apex.x + Math.sin(t * 0.5) * width * 0.12, cy = apex.y + depth * 0.6;
    const cr = depth * 0.09;
    // Posterior acoustic enhancement: fluid attenuates less, so the column below is brighter.
    ctx.globalAlpha = 0.3;
    ctx.fillRect(cx - cr, cy, cr * 2, depth);
    Object.assign(ctx, { globalAlpha: 1, globalCompositeOperation: "source-over" });
    shade(cx, cy, cr, [[0, 0.95], [0.8, 0.9], [1, 0]]);
    shade(apex.x, apex.y, depth, [[0, 0], [1, 0.6]]); // attenuation with depth
    ctx.restore();

    // Depth scale: a tick per centimetre, labelled every 5.
    const sx = width - 24;
    Object.assign(ctx, { strokeStyle: "#ccc", fillStyle: "#ccc", lineWidth: 1, font: small });
    Object.assign(ctx, { textAlign: "right", textBaseline: "middle" });
    ctx.beginPath();
    ctx.moveTo(sx + 0.5, apex.y);
    ctx.lineTo(sx + 0.5, apex.y + depth);
    for (let c = 0; c <= DEPTH_CM; c++) {
      const y = Math.round(apex.y + c * cm) + 0.5;
      ctx.moveTo(sx, y);
      ctx.lineTo(sx + (c % 5 ? 5 : 10), y);
      if (c && c % 5 === 0) ctx.fillText(String(c), sx - 3, y);
    }
    ctx.stroke();

    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, BANNER);
    Object.assign(ctx, { fillStyle: "#fff", textAlign: "center" });
    ctx.font = `bold ${fontPx * 2}px sans-serif`;
    ctx.fillText("DEMO PHANTOM — NOT A PATIENT", width / 2, BANNER / 2);
    Object.assign(ctx, { fillStyle: "#999", textAlign: "left", textBaseline: "alphabetic" });
    ctx.font = small;
    ctx.fillText("demo source", 8, height - 8);
  }

  draw();
  const stream = canvas.captureStream(fps);
  // setInterval rather than requestAnimationFrame: rAF stops in background tabs, and the
  // operator's tab is often in the background while the expert watches.
  const timer = setInterval(draw, 1000 / fps);
  const stop = () => {
    clearInterval(timer);
    for (const track of stream.getTracks()) track.stop();
  };
  return { stream, stop };
}
