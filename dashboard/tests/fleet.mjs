// The fleet panel in headless Chromium: it lists the instances sharing the
// etcd prefix, links to the others' dashboards, and says whether this one is
// connected or serving the last known state.
//
//   node tests/fleet.mjs URL IDS connected|unreachable
import { checkPage } from "./launch.mjs";

const [url, ids, expect] = process.argv.slice(2);
if (!url || !ids || !["connected", "unreachable"].includes(expect)) {
  console.error("usage: node tests/fleet.mjs URL ID[,ID…] connected|unreachable");
  process.exit(2);
}

await checkPage(url, async (page, problems) => {
  await page.waitForFunction(([want, state]) => {
    const panel = document.querySelector("#fleet");
    if (!panel || panel.hidden) return false;
    const shown = [...panel.querySelectorAll("tbody tr td:first-child")].map((td) => td.textContent);
    const status = document.querySelector("#fleet-status").textContent;
    // Every other instance's dashboard is a link to it, once its record is read.
    const links = panel.querySelectorAll("#fleet-instances tbody a[href]").length;
    return shown.join(",") === want && status.includes(state) && links === want.split(",").length - 1;
  }, [ids, expect], { timeout: 15000 }).catch(async () => {
    const text = await page.$eval("#fleet", (p) => `${p.hidden ? "(hidden) " : ""}${p.textContent}`).catch((e) => `${e}`);
    problems.push(`the fleet panel did not show ${ids} ${expect}: ${text.replace(/\s+/g, " ")}`);
  });
  // Every other instance's dashboard is a link to it.
  const links = await page.$$eval("#fleet-instances tbody a[href]", (as) => as.map((a) => a.href));
  const others = ids.split(",").length - 1;
  if (problems.length === 0 && (links.length !== others || !links.every((h) => /^http:\/\//.test(h)))) {
    problems.push(`expected ${others} dashboard links to the other instances, found ${JSON.stringify(links)}`);
  }
}, `fleet panel: ${ids} ${expect}`);
