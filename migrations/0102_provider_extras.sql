-- Provider settings beyond kind, base URL and one credential: Azure's api_version, Bedrock's
-- region and AWS credentials, and several weighted credentials. jsonb in one shape
-- (controlplane::rows::ProviderExtra); every credential in it is sealed, never plaintext.
ALTER TABLE providers ADD COLUMN extra jsonb NOT NULL DEFAULT '{}';
