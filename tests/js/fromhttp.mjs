// Resolves credentials the way aws-sdk-js-v3 does in a pod: fromHttp reads
// AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE.
import { fromHttp } from "@aws-sdk/credential-providers";

const creds = await fromHttp({ timeout: 2000, maxRetries: 1 })();
console.log(JSON.stringify({
  accessKeyId: creds.accessKeyId,
  sessionToken: Boolean(creds.sessionToken),
  expiration: creds.expiration?.toISOString(),
}));
