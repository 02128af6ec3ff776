// Calls a running PolicyService from Node.js with @grpc/grpc-js and @grpc/proto-loader:
// Put, Get, and a failing Put whose google.rpc status details are decoded.
// Usage: node policy_client.mjs TARGET KEY_ARN GOOGLE_PROTOS_DIR  -> prints one JSON object.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const [target, keyArn, googleProtos] = process.argv.slice(2);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../protos");

const definition = protoLoader.loadSync("kmspolicy/v1/policy_service.proto", {
  includeDirs: [root],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const { PolicyService } = grpc.loadPackageDefinition(definition).kmspolicy.v1;
const client = new PolicyService(target, grpc.credentials.createInsecure());

// google.rpc.Status and the detail types, to decode grpc-status-details-bin.
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) => path.join(googleProtos, target);
rpcRoot.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
const Status = rpcRoot.lookupType("google.rpc.Status");

function call(method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10_000);
    client[method](request, { deadline }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

function decodeDetails(err) {
  const [raw] = err.metadata.get("grpc-status-details-bin");
  const status = Status.decode(raw);
  return {
    code: status.code,
    message: status.message,
    details: status.details.map((any) => {
      const typeName = any.type_url.split("/").pop();
      const type = rpcRoot.lookupType(typeName);
      return { type: typeName, value: type.toObject(type.decode(any.value), { defaults: false }) };
    }),
  };
}

const policy = JSON.stringify({
  Version: "2012-10-17",
  Statement: [
    {
      Sid: "Enable IAM User Permissions",
      Effect: "Allow",
      Principal: { AWS: "arn:aws:iam::123456789012:root" },
      Action: "kms:*",
      Resource: "*",
    },
    { Sid: "FromNode", Effect: "Allow", Principal: { AWS: "123456789012" }, Action: "kms:Decrypt", Resource: "*" },
  ],
});

const put = await call("PutKeyPolicy", { key_id: keyArn, policy });
const got = await call("GetKeyPolicy", { key_id: keyArn });
let failure = null;
try {
  await call("PutKeyPolicy", { key_id: keyArn, policy: '{"Version": "2012-10-17", "Statement": []}' });
} catch (err) {
  failure = { grpcCode: err.code, ...decodeDetails(err) };
}
client.close();
console.log(JSON.stringify({ put, got, failure }));
