// The dashboard with routes and pools, in headless Chromium: a button per
// pool shows that pool's upstreams (and only theirs in the charts), the
// routes table lists each route with its pool, the explain box says which
// route a request takes and why, and a drain clicked in a named pool's
// table reaches that pool.
//
//   node tests/routes.mjs URL TOKEN POOL UPSTREAM [SCREENSHOT.png]
import { checkPage } from "./launch.mjs";

const [url, token, poolName, target, screenshot] = process.argv.slice(2);
if (!url || !token || !poolName || !target) {
  console.error("usage: node tests/routes.mjs URL TOKEN POOL UPSTREAM [SCREENSHOT.png]");
  process.exit(2);
}

await checkPage(url, async (page, problems) => {
  await page.waitForFunction(() => document.querySelector("#live")?.textContent === "live", null, { timeout: 15000 });
  const pools = await page.$$eval("#pools button", (bs) => bs.map((b) => b.dataset.pool));
  if (!pools.includes(poolName)) problems.push(`no button for pool ${poolName}: ${pools}`);

  // The pool's own upstreams, and only theirs.
  await page.click(`#pools button[data-pool="${poolName}"]`);
  await page.waitForFunction((name) => document.querySelector("#pool-name").textContent === name, poolName, { timeout: 5000 });
  const rows = await page.$$eval("#upstreams tbody tr", (rs) => rs.map((r) => r.dataset.upstream));
  if (!rows.includes(target)) problems.push(`pool ${poolName} does not show ${target}: ${rows}`);
  const state = await (await page.request.get(new URL("/api/state", url).href)).json();
  const own = state.pools.find((p) => p.name === poolName).upstreams.map((u) => u.name);
  if (rows.some((r) => !own.includes(r))) problems.push(`rows ${rows} are not all pool ${poolName}'s (${own})`);
  const drawn = await page.evaluate(() => {
    const c = Object.values(Chart.instances).find((x) => x.canvas.id === "chart-rps");
    return c.data.datasets.filter((d, i) => c.isDatasetVisible(i)).map((d) => d.upstream);
  });
  if (drawn.some((d) => !own.includes(d))) problems.push(`the charts draw ${drawn}, not only pool ${poolName}'s`);

  // The routes table, and the explain box.
  const routes = await page.$$eval("#routes tbody tr", (rs) => rs.map((r) => r.textContent));
  if (!routes.some((r) => r.includes(`pool ${poolName}`))) problems.push(`no route to pool ${poolName}: ${routes}`);
  await page.fill("#explain-url", "http://localhost/api/items");
  await page.click("#explain-form button[type=submit]");
  await page.waitForFunction(() => /route \S+: yes/.test(document.querySelector("#explain-result").textContent), null, { timeout: 5000 })
    .catch(() => problems.push("the explain box gave no verdict"));

  // A drain in this pool.
  await page.fill("#token", token);
  await page.click("#token-form button[type=submit]");
  await page.locator(`#upstreams tbody tr[data-upstream="${target}"] button.drain`).click();
  await page.waitForFunction((name) => {
    const r = document.querySelector(`#upstreams tbody tr[data-upstream="${name}"]`);
    return r && r.querySelector(".status").textContent.includes("DRAINED");
  }, target, { timeout: 15000 }).catch(async () => {
    problems.push(`${target} not drained: ${await page.$eval("#admin-status", (e) => e.textContent)}`);
  });

  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
}, "routes and pools ok", { strict: true });
