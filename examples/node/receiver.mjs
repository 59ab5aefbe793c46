// A tiny Auxot callback receiver in Node.js: verifies each POST with the Standard Webhooks
// library, drops duplicates, prints the rest.
//
//     npm ci                      # once, here: installs standardwebhooks (pinned in the lock)
//     AUXOT_CALLBACK_SECRET=whsec_... node receiver.mjs --port 9000
//
// Answers 204 when a callback is verified (or already seen), 400 when it is not, 411 without
// a Content-Length, 413 above 16 MiB. Verify the raw bytes: a framework's JSON body parser
// re-serializes the body and the signature no longer matches (with Express, use
// express.raw({ type: "application/json" }) on this route). A real receiver keeps the seen
// ids in its database (unique constraint on webhook-id) and queues slow work instead of
// doing it inline.
import { createServer } from "node:http";
import { parseArgs } from "node:util";

import { Webhook, WebhookVerificationError } from "standardwebhooks";

const MAX_BODY = 16 * 1024 * 1024; // a callback body is the poll body: bounded, far below this

const { values: args } = parseArgs({
  options: { port: { type: "string", default: "9000" }, host: { type: "string", default: "127.0.0.1" } },
});
// The secret from the environment (as `auxot verify-callback` reads it), never the command
// line, where `ps` shows it.
const secret = process.env.AUXOT_CALLBACK_SECRET ?? "";
if (!secret.startsWith("whsec_")) {
  console.error("Set AUXOT_CALLBACK_SECRET to the intake's signing secret (whsec_...).");
  process.exit(2);
}
const webhook = new Webhook(secret);
const seen = new Set(); // production: a table with a unique webhook_id column

function answer(res, status) {
  res.writeHead(status, { "Content-Length": "0" });
  res.end();
}

const server = createServer((req, res) => {
  if (req.method !== "POST") return answer(res, 405);
  const length = Number.parseInt(req.headers["content-length"] ?? "", 10);
  if (Number.isNaN(length)) return answer(res, 411); // Auxot always sends Content-Length
  if (length < 0 || length > MAX_BODY) return answer(res, 413);
  const chunks = [];
  let received = 0;
  req.on("data", (chunk) => {
    received += chunk.length;
    if (received > MAX_BODY) req.destroy();
    else chunks.push(chunk);
  });
  req.on("end", () => {
    const body = Buffer.concat(chunks); // the raw bytes Auxot signed
    let item;
    try {
      item = webhook.verify(body, req.headers); // signature(s) + 5-minute timestamp window
    } catch (error) {
      // Not only WebhookVerificationError: a body that is not JSON raises SyntaxError.
      const kind = error instanceof WebhookVerificationError ? "" : ` (${error.name})`;
      console.log(`REJECTED${kind}: ${error.message}`);
      return answer(res, 400);
    }
    const id = req.headers["webhook-id"];
    if (seen.has(id)) {
      console.log(`duplicate ${id}: already handled`);
    } else {
      seen.add(id);
      console.log(`verified ${id}: work ${item.work_id} is ${item.status}`);
      console.log(JSON.stringify(item, null, 2));
    }
    return answer(res, 204);
  });
});

server.on("error", (err) => {
  // Another receiver on the port, say: one line, not an unhandled 'error' and its stack.
  const reason = err.code === "EADDRINUSE" ? "is already in use" : `cannot be used (${err.message})`;
  console.error(`Port ${args.port} on ${args.host} ${reason}: pick another with --port (and point the callback URL at it).`);
  process.exit(1);
});
server.listen(Number(args.port), args.host, () => {
  console.log(`Listening on http://${args.host}:${args.port}/hook (Ctrl-C stops)`);
});
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => server.close(() => process.exit(0)));
