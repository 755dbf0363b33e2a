// Drives the dashboard in headless Chromium: the page loads without console
// errors, shows every upstream's status, draws the charts from live data, and a
// drain clicked in the page takes the upstream out of rotation.
//
//   node tests/browser.mjs URL TOKEN UPSTREAM [SCREENSHOT.png]
import { checkPage } from "./launch.mjs";

const [url, token, target, screenshot] = process.argv.slice(2);
if (!url || !token || !target) {
  console.error("usage: node tests/browser.mjs URL TOKEN UPSTREAM [SCREENSHOT.png]");
  process.exit(2);
}

await checkPage(url, async (page, problems) => {
  await page.waitForFunction(() => document.querySelector("#live")?.textContent === "live", null, { timeout: 15000 });

  // One pool: no pool buttons.
  if (await page.isVisible("#pools")) problems.push("pool buttons shown for a single pool");

  const statuses = await page.$$eval("#upstreams tbody tr", (rows) =>
    rows.map((r) => ({ name: r.dataset.upstream, status: r.querySelector(".status").textContent })));
  if (statuses.length === 0) problems.push("no upstream rows");
  for (const s of statuses) if (!/UP|DOWN/.test(s.status)) problems.push(`no status for ${s.name}: ${s.status}`);

  // Charts have live points (at least two per request-rate series).
  await page.waitForFunction(() => {
    const charts = Object.values(Chart.instances);
    return charts.length === 5 && charts.every((c) => c.data.datasets.length > 0 && c.data.datasets[0].data.length >= 2);
  }, null, { timeout: 15000 });
  await page.waitForFunction(() => {
    const c = Object.values(Chart.instances).find((x) => x.canvas.id === "chart-rps");
    return c.data.datasets.some((d) => d.data.some((p) => p.y > 0));
  }, null, { timeout: 15000 }).catch(() => problems.push("the requests-per-second chart shows no traffic"));

  // Drain from the page.
  await page.fill("#token", token);
  await page.click("#token-form button[type=submit]");
  const row = page.locator(`#upstreams tbody tr[data-upstream="${target}"]`);
  await row.locator("button.drain").click();
  await page.waitForFunction((name) => {
    const r = document.querySelector(`#upstreams tbody tr[data-upstream="${name}"]`);
    return r && r.querySelector(".status").textContent.includes("DRAINED");
  }, target, { timeout: 15000 });
  await page.waitForFunction(() => document.querySelector("#events").textContent.includes("drained by"), null, { timeout: 15000 });

  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
}, "dashboard ok", { strict: true });
