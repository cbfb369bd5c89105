// Prints @asyncapi/parser's diagnostics of one AsyncAPI document as a JSON array on stdout:
//   node validate.cjs <node_modules dir> <document>
// [{severity (0 error, 1 warning, 2 info, 3 hint), code, message, path}]. The caller judges them
// (scripts/asyncapi/generate.py): the parser can return a document with error diagnostics, so
// neither its return nor this script's exit status alone says whether the document is valid.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

async function main() {
  const [modules, document] = process.argv.slice(2);
  if (!modules || !document) {
    console.error('usage: node validate.cjs <node_modules dir> <document>');
    return 2;
  }
  const { Parser } = require(path.join(path.resolve(modules), '@asyncapi', 'parser'));
  const parser = new Parser();
  const text = fs.readFileSync(document, 'utf8');
  const { document: parsed, diagnostics } = await parser.parse(text, {
    source: path.resolve(document),
  });
  const found = diagnostics.map((d) => ({
    severity: d.severity,
    code: String(d.code),
    message: d.message,
    path: d.path,
  }));
  if (parsed === undefined && !found.some((d) => d.severity === 0)) {
    found.push({ severity: 0, code: 'no-document', message: 'the parser returned no document', path: [] });
  }
  process.stdout.write(JSON.stringify(found) + '\n');
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(error && error.stack ? error.stack : String(error));
    process.exit(1);
  },
);
