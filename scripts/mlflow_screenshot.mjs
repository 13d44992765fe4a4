// A screenshot of the MLflow UI's chart view of the ensemble members, for the README.
//   mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 &
//   npm install --no-save playwright-core   # and Debian's chromium
//   node scripts/mlflow_screenshot.mjs http://127.0.0.1:5000 <experiment id> docs/mlflow_members.png
// Each member's run logs its final val_ and test_ figures under the same names, so the chart
// view of the runs tagged kind = member draws one chart per figure with a bar per member.
import { chromium } from "playwright-core";

const [base, experiment, out] = process.argv.slice(2);
const filter = encodeURIComponent("tags.kind = 'member'");
const url = `${base}/#/experiments/${experiment}?compareRunsMode=CHART&searchFilter=${filter}`;
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1500, height: 950 } });
await page.goto(url, { waitUntil: "networkidle" });
await page.waitForTimeout(4000);  // the charts draw after the runs load
await page.screenshot({ path: out });
await browser.close();
console.log(`${url} -> ${out}`);
