// Validates the custom resources of rendered manifests against the schemas
// generated from their CRDs (the @kubernetes-models packages): types,
// enumerations and required fields. Used by `cargo xtask check`, which
// passes the manifest files; prints one line per custom resource, `ok` or
// `ERROR`, and exits 1 when any failed. Other kinds are kubernetes-validate's.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { Certificate } from "@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate";
import { ExternalSecret } from "@kubernetes-models/external-secrets/external-secrets.io/v1/ExternalSecret";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const MODELS = {
  "cert-manager.io/v1 Certificate": Certificate,
  "external-secrets.io/v1 ExternalSecret": ExternalSecret,
  "monitoring.coreos.com/v1 ServiceMonitor": ServiceMonitor,
};

let failed = false;
for (const file of process.argv.slice(2)) {
  for (const document of parseAllDocuments(readFileSync(file, "utf8"))) {
    const object = document.toJS();
    if (!object || !object.kind) continue;
    const Model = MODELS[`${object.apiVersion} ${object.kind}`];
    if (!Model) continue;
    const what = `${file} ${object.kind} ${object.metadata?.name}`;
    try {
      new Model(object).validate();
      console.log(`ok ${what}`);
    } catch (error) {
      failed = true;
      console.log(`ERROR ${what}: ${error.message ?? error}`);
    }
  }
}
process.exit(failed ? 1 : 0);
