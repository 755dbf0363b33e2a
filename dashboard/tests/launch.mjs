// Headless Chromium as the dashboard's browser tests run it.
import { chromium } from "playwright-core";

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

// Opens `url` in a fresh page, runs `check(page, problems)`, and ends the
// process: exit 1 with every problem listed (page errors included), or
// `done` printed. `strict` also counts console errors and failed requests
// (but the event stream's, which a closing page cuts).
export async function checkPage(url, check, done, { strict = false } = {}) {
  const browser = await launch();
  const problems = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    if (strict) {
      page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
      page.on("requestfailed", (r) => {
        if (!r.url().endsWith("/api/stream")) problems.push(`request failed: ${r.url()}`);
      });
    }
    await page.goto(url);
    await check(page, problems);
  } catch (e) {
    problems.push(`${e}`);
  } finally {
    await browser.close();
  }
  if (problems.length) {
    console.error(problems.join("\n"));
    process.exit(1);
  }
  console.log(done);
}
