/* config.h — the gateway's configuration file (a Lua table file, secrets by file path). */
#ifndef PAYGATE_CONFIG_H
#define PAYGATE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "log.h"

#define CONFIG_MAX_ADMIN_TOKENS 16

struct config {
	char *path; /* the file it came from, or NULL for defaults */
	char *listen_host;
	int listen_port; /* 0: pick a free port and print it */
	char *scripts_dir;
	char *lualib_dir;
	char *db_path;

	size_t max_header_bytes;
	size_t max_body_bytes;
	int timeout_s;                  /* evhttp read/write timeout */
	int header_timeout_ms;          /* whole request head, from the start of the request */
	int body_timeout_ms;            /* whole body, from the end of the head */
	int max_connections;            /* open client connections per worker */
	int max_connections_per_client; /* ... from one client address; 0: no cap */
	int open_files;                 /* RLIMIT_NOFILE to set at start; 0: the hard limit */

	size_t script_memory_bytes;      /* cap per generation (Lua allocator) */
	int64_t script_max_instructions; /* per request or job */
	int max_draining;                /* old generations allowed to drain at once */

	struct admin_token {
		char *name;  /* who, in the audit trail: "admin" for admin.token_file, else its key in admin.tokens */
		char *token; /* at least 16 characters, read from its file */
	} admin_tokens[CONFIG_MAX_ADMIN_TOKENS];
	int n_admin_tokens;
	int admin_trust_loopback; /* admin.trust_loopback: loopback peers need no token */
	char *console_dir;        /* admin.console_dir: the web console's files; NULL: beside lualib */
	int watch;                /* reload on file change */
	int watch_debounce_ms;
	int watch_marker; /* reload only when scripts/.reload is written (changes spanning files apply at once) */

	int fetch_timeout_ms;
	int fetch_connect_timeout_ms;
	int fetch_max_inflight;
	size_t fetch_max_response_bytes;
	char *fetch_ca_file; /* when set, the only CAs trusted (the system's are not read) */
	/* The outbound TLS policy and connection reuse (fetch.tls_min_version, ...). */
	int fetch_tls_min;              /* 12 or 13: the lowest TLS version spoken (1.2 or 1.3) */
	int fetch_max_host_connections; /* open connections per upstream host; more transfers wait */
	int fetch_keepalive_s;          /* a connection idle this long (s) is closed, not reused */

	int jobs_max_running;
	int64_t jobs_lease_ms;   /* a claimed job another worker may take over after this long */
	int db_busy_timeout_ms;  /* how long a write waits for another worker's lock (its coroutine, not the loop) */
	int db_checkpoint_pages; /* a WAL this long after a commit is checkpointed (on the checkpointer's thread) */
	int pg_pool_size;        /* PostgreSQL: connections per worker */
	int pg_statement_timeout_ms; /* PostgreSQL: the server cancels a statement that runs longer */
	int pg_concurrent_tx;        /* PostgreSQL: db.tx transactions run side by side (1) or one at a time (0) */
	char *pg_password_file;      /* PostgreSQL: the password, first line of this file (NULL: the URL's, or none) */
	int workers;                 /* worker processes (the daemon) */
	int watchdog_ms;             /* a worker loop stuck this long is ended and restarted; 0: off */
	int unsafe_no_sync;          /* benchmarks only (PAYGATE_BENCH): commits are not synced */
	enum log_level log_level;

	char *app_json;            /* the `app` table as JSON; scripts see it as `config` */
	char *session_secret_file; /* key for session tokens; default: generated, kept in the db */

	struct wxpay_config {
		int enabled; /* a `wechatpay` table was given */
		char *mchid, *appid;
		char *app_appid;              /* APP pay: the mobile app's appid (open platform); NULL: no APP pay */
		char *merchant_serial;        /* serial of the merchant API certificate ... */
		char *merchant_cert_file;     /* ... or the certificate itself (apiclient_cert.pem) */
		char *private_key_file;       /* apiclient_key.pem */
		char *apiv3_key_file;         /* the 32-byte APIv3 key */
		char *app_secret_file;        /* mini-program AppSecret, for jscode2session */
		char *platform_cert_files[8]; /* certificate mode: known platform certificates */
		int n_platform_certs;
		char *public_key_file; /* public-key mode: the WeChat Pay public key ... */
		char *public_key_id;   /* ... and its id, PUB_KEY_ID_... */
		char *base_url;        /* https://api.mch.weixin.qq.com, or the sandbox */
		char *login_base_url;  /* https://api.weixin.qq.com, or the sandbox */
		int sandbox;           /* the upstream is a local sandbox: http:// to a loopback host allowed */
		char *notify_url, *refund_notify_url;
		int download_certificates; /* certificate mode: fetch /v3/certificates */
		int cert_refresh_s;
	} wxpay;
};

/* Fill `cfg` with the built-in defaults (all strings owned by cfg). */
int config_defaults(struct config *cfg);

/*
** Load `path` over the defaults. The file is Lua evaluated with no library
** at all (only assignments and tables). Relative paths in it are relative to
** the file's directory. On error returns -1 with a message in err; cfg then
** holds defaults and must still be freed with config_free.
*/
int config_load(struct config *cfg, const char *path, char *err, size_t errlen);

/* Parse "host:port" into cfg. */
int config_set_listen(struct config *cfg, const char *addr, char *err, size_t errlen);

void config_free(struct config *cfg);

/* Read a whole (small) file into a NUL-terminated malloc'd buffer; NULL on error. */
char *config_read_file(const char *path, size_t max, size_t *len, char *err, size_t errlen);

/* Does `database` name a PostgreSQL server ("postgresql://...", "postgres://...") rather than a SQLite file? */
int config_database_is_postgresql_url(const char *database);

#endif
