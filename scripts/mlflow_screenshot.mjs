// A screenshot of the MLflow UI's chart view of the ensemble members, for the README.
//   mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 &
//   npm install --no-save playwright-core   # and Debian's chromium
//   node scripts/mlflow_screenshot.mjs http://127.0.0.1:5000 <experiment id> docs/mlflow_members.png \
//     [test_mean_class_error]   # the figure whose charts are shown (each step's and the final)
// Each member's run logs its final val_ and test_ figures under the same names, so the chart
// view of the runs tagged kind = member draws one chart per figure with a bar per member.
import { chromium } from "playwright-core";

const [base, experiment, out, chart = "test_mean_class_error"] = process.argv.slice(2);
const filter = encodeURIComponent("tags.kind = 'member'");
const url = `${base}/#/experiments/${experiment}/runs?compareRunsMode=CHART&searchFilter=${filter}`;
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1500, height: 950 } });
await page.goto(url, { waitUntil: "networkidle" });
await page.waitForTimeout(4000);  // the charts draw after the runs load
for (const name of ["Got it", "Close"]) {  // first-visit pop-ups over the charts
  const button = page.getByRole("button", { name });
  if (await button.count()) await button.first().click().catch(() => {});
}
// nested runs show under their parent (the `members` run), collapsed: expand each parent so
// that the chart view draws a bar per member
for (const expand of await page.locator('button[data-component-id*="runnamecellrenderer"]').all()) {
  await expand.click().catch(() => {});
}
await page.getByPlaceholder("Search metric charts").fill(chart);  // one figure, every step
await page.waitForTimeout(2500);
await page.screenshot({ path: out });
await browser.close();
console.log(`${url} -> ${out}`);
