// Drives the demo controls in headless Chromium: "slow" on a demo upstream
// gets it sidelined (its effective weight, charted, falls to 0), "normal"
// brings it back, as a newcomer would see it after `cargo run`.
//
//   node tests/demo.mjs URL UPSTREAM
import { checkPage } from "./launch.mjs";

const [url, target] = process.argv.slice(2);
if (!url || !target) {
  console.error("usage: node tests/demo.mjs URL UPSTREAM");
  process.exit(2);
}

const status = (name) => {
  const r = document.querySelector(`#upstreams tbody tr[data-upstream="${name}"]`);
  return r ? r.querySelector(".status").textContent : "";
};
// The last effective weight charted for `name`.
const charted = (name) => {
  const c = Object.values(Chart.instances).find((x) => x.canvas.id === "chart-weights");
  const d = c && c.data.datasets.find((s) => s.label === name || s.label === `${name} effective`);
  return d && d.data.length ? d.data[d.data.length - 1].y : null;
};
await checkPage(url, async (page, problems) => {
  await page.waitForFunction(() => document.querySelector("#live")?.textContent === "live", null, { timeout: 15000 });
  const row = page.locator(`#upstreams tbody tr[data-upstream="${target}"]`);
  await row.locator("button.demo-slow").waitFor({ state: "visible", timeout: 15000 });
  await page.waitForFunction(`(${charted})("${target}") > 0`, null, { timeout: 15000 });

  await row.locator("button.demo-slow").click();
  await page.waitForFunction(`(${status})("${target}").includes("SIDELINED")`, null, { timeout: 30000 });
  await page.waitForFunction(`(${charted})("${target}") === 0`, null, { timeout: 15000 })
    .catch(() => problems.push("the weights chart did not show the sidelined upstream at 0"));

  await row.locator("button.demo-normal").click();
  await page.waitForFunction(`!(${status})("${target}").includes("SIDELINED")`, null, { timeout: 30000 });
  await page.waitForFunction(`(${charted})("${target}") > 0`, null, { timeout: 15000 })
    .catch(() => problems.push("the weights chart did not show the upstream back"));
}, "demo controls ok");
