// ApiClient: a small typed HTTP client for Epoch's v1 API, used by epochctl (and by
// tests and tools that want to drive a running epochd).
//
// What it does for its caller:
//  - Turns an HTTP error answer `{"error": {"code", "message", "details": [...]}}`
//    into a Status carrying the server's message and details (StatusFromHttpError).
//  - Takes a list of servers. A request goes to the server that answered last (or the
//    first); when a server refuses the connection or answers 503 (standby, leader
//    unknown) it tries the next one. A 307/308 is followed (method and body kept) up to
//    `max_redirects` hops, and the server redirected to is remembered as the leader,
//    but only to the same origin (scheme, host, port) or to another of `servers` with
//    the same scheme (never https to http): the token goes with every request, so a
//    redirect elsewhere is an error (kFailedPrecondition), not followed.
//    A POST whose outcome is unknown (sent, then the connection broke) is never retried
//    silently: it fails with kUnavailable "... may have succeeded", unless it carries an
//    Idempotency-Key.
//  - Reads streams: `text/event-stream` is parsed into SseEvent (id/event/data) and
//    handed to a callback one event at a time; any other body is handed over in chunks
//    as it arrives.
//
// httplib stays inside client.cc: this header is cheap to include.
//
// Thread-safety: an ApiClient is not thread-safe (it remembers the last good server);
// use one per thread. SseParser is a plain value.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"

namespace epoch::client {

inline constexpr std::string_view kDefaultServer = "https://127.0.0.1:30745";

using Headers = std::vector<std::pair<std::string, std::string>>;
using Query = std::vector<std::pair<std::string, std::string>>;

struct ClientOptions {
  std::vector<std::string> servers;  // base URLs: "http://host:port" or "https://host:port"
  std::string token;                 // sent as "Authorization: Bearer <token>" when set
  std::string ca_cert_path;          // https: trust this CA file (e.g. <data-dir>/tls/cert.pem)
  bool insecure = false;             // https: skip certificate verification
  int max_redirects = 5;
  Micros connect_timeout = std::chrono::seconds(3);
  Micros read_timeout = std::chrono::seconds(30);
  // How long a follow stream may stay silent before it counts as broken.
  Micros stream_idle_timeout = std::chrono::hours(1);
};

// One server-sent event. `id` is the last id seen on the stream (the SSE rule: it
// persists until another id: line changes it); `event` is empty for the default type.
struct SseEvent {
  std::string id;
  std::string event;
  std::string data;  // data: lines joined with '\n'
};

// Incremental text/event-stream parser (WHATWG grammar): lines end in \n, \r\n or \r;
// "field: value" (one leading space stripped); ':' starts a comment; a blank line
// dispatches; an event without data lines is not dispatched; retry: is ignored.
// An unterminated event at end of stream is discarded, as the spec says.
class SseParser {
 public:
  using Callback = std::function<bool(const SseEvent&)>;  // false: stop reading
  explicit SseParser(Callback cb) : cb_(std::move(cb)) {}

  // Feeds bytes; returns false once the callback asked to stop.
  bool Feed(std::string_view chunk);

 private:
  bool Line(std::string_view line);

  Callback cb_;
  std::string buf_;
  bool skip_lf_ = false;  // the previous chunk ended in '\r'
  std::string last_id_;
  std::string event_;
  std::string data_;
  bool has_data_ = false;
};

struct Response {
  int status = 0;
  std::string content_type;
  std::string body;
  std::string server;  // base URL that answered
  Headers headers;     // every header of the answer
};

// Callbacks for a streamed GET. Either may be empty (that kind of body is dropped).
// Returning false stops the stream; the call then returns OK.
struct StreamHandlers {
  std::function<bool(const SseEvent&)> on_event;   // Content-Type text/event-stream
  std::function<bool(std::string_view)> on_chunk;  // any other Content-Type
  // Called once with a 2xx answer's status and headers, before its body.
  std::function<void(int status, const Headers& headers)> on_headers;
};

// Maps an HTTP error answer to a Status: the code from the body's "error.code" when it
// names a StatusCode (e.g. "not_found"), else from the HTTP status; the message and
// details from the body (detail objects become "path: message"); a body that is not
// Epoch's error shape becomes "HTTP <status>: <start of body>".
Status StatusFromHttpError(int http_status, std::string_view body);

// Percent-encodes everything but unreserved characters (RFC 3986), for path segments
// and query values.
std::string UrlEncode(std::string_view s);
// "/v1/runs" + {{"state","running"}} -> "/v1/runs?state=running"; empty values skipped.
std::string WithQuery(std::string path, const Query& query);

// Splits "http://a:1, http://b:2" into URLs; trims spaces and a trailing '/'; adds
// "http://" when no scheme is given. kInvalidArgument when empty or not http(s).
Result<std::vector<std::string>> SplitServers(std::string_view csv);

// A -p value: valid JSON (number, true/false/null, "quoted", [..], {..}) is taken as
// JSON; anything else is the literal string.
Json ParseParamValue(std::string_view value);
// "k=v" items into an object. json_values: values go through ParseParamValue (params);
// else they stay strings (labels). kInvalidArgument on a missing '=', an empty or a
// duplicate key.
Result<Json> ParseKeyValues(const std::vector<std::string>& items, bool json_values);

struct SubmitRunRequest {
  std::string workflow;
  std::optional<int64_t> version;
  Json params = Json::object();
  Json labels = Json::object();
  std::string idempotency_key;  // sent as the Idempotency-Key header when set
};

struct RunListQuery {
  std::string state, workflow, cursor;
  std::vector<std::string> labels;  // "k=v", one label= query parameter each
  std::optional<int64_t> limit;
};

struct EventQuery {
  std::string run;  // empty: the global log (/v1/events)
  std::optional<uint64_t> after;
  std::string type, stream;
  std::optional<int64_t> limit;
};

struct MetricsQuery {
  std::string name;                // empty: every series
  std::optional<int64_t> attempt;  // default: all
};

struct LogQuery {
  std::optional<int64_t> attempt;  // default: the last
  std::optional<int64_t> tail;     // only the last N lines (and, following, what comes next)
  bool follow = false;
};

// The answer to a write: the HTTP status (201 created / 200 unchanged) and the body.
struct WriteResult {
  int status = 0;
  Json body;
};

class ApiClient {
 public:
  // kInvalidArgument when there is no server or a URL is not http(s)://host[:port].
  static Result<std::unique_ptr<ApiClient>> Create(ClientOptions options);
  ~ApiClient();
  ApiClient(const ApiClient&) = delete;
  ApiClient& operator=(const ApiClient&) = delete;

  // Raw calls. A non-2xx answer becomes StatusFromHttpError; a transport failure on
  // every server becomes kUnavailable naming the servers tried.
  Result<Response> Get(const std::string& path_and_query);
  Result<Response> Post(const std::string& path, const Json& body, const Headers& headers = {});
  Result<Json> GetJson(const std::string& path_and_query);
  Result<WriteResult> PostJson(const std::string& path, const Json& body,
                               const Headers& headers = {});
  // A streamed GET (follow=true endpoints). Returns OK when the server ends the stream
  // or a handler returns false; kUnavailable when the stream breaks (the caller may
  // resume, e.g. with after=<last position>). Failover and redirects apply only
  // before the first byte of a 2xx answer. idle_timeout overrides stream_idle_timeout.
  Status Stream(const std::string& path_and_query, const Headers& headers,
                const StreamHandlers& handlers, std::optional<Micros> idle_timeout = {});

  // Typed calls: one per endpoint epochctl uses.
  Result<WriteResult> RegisterWorkflow(const Json& definition);
  Result<Json> ListWorkflows();
  Result<Json> GetWorkflow(const std::string& name, std::optional<int64_t> version);
  Result<WriteResult> SubmitRun(const SubmitRunRequest& request);
  Result<Json> GetRun(const std::string& id);
  Result<Json> GetRunHistory(const std::string& id);
  Result<Json> ListRuns(const RunListQuery& query);
  Result<WriteResult> CancelRun(const std::string& id);
  Result<WriteResult> RetryRun(const std::string& id);
  Result<Json> ListEvents(const EventQuery& query);
  // Follows the event stream; each `data:` payload is parsed as an Event. Control
  // events (event: ping / heartbeat / keepalive) are skipped; a data payload that is
  // not JSON is kCorruption.
  Status FollowEvents(const EventQuery& query, const std::function<bool(const Json&)>& on_event,
                      std::optional<Micros> idle_timeout = {});
  // A step's log: as it is (the whole log, read in ranges when it is larger than one
  // answer), its last `tail` lines, or followed (-f) until the attempt ends.
  Status GetLogs(const std::string& run, const std::string& step, const LogQuery& query,
                 const std::function<bool(std::string_view)>& on_text);
  // A step's live metrics (GET .../metrics): {"series": [{"attempt", "rank", "name",
  // "points": [[x, y]]}], "last", "attempts"}.
  Result<Json> GetMetrics(const std::string& run, const std::string& step, const MetricsQuery& q);
  Result<Json> ListContainers();
  Result<Json> GetCluster();
  // GET /v1/usage: bytes per tenant on the data dir and what retention deleted.
  Result<Json> GetUsage();
  // GET /v1/audit/verify; query as the server takes it ("from=..&hash=..", "against=P:H").
  Result<Json> VerifyAudit(const std::string& query);
  // Lineage (GET /v1/datasets, /v1/models): the list holds each name's latest version
  // with a "versions" count; a name without a version answers {"name", "versions": [...]}
  // (every version: the pages the server sends, followed to the last), with a version
  // that one version. kNotFound for an unknown name or version.
  Result<Json> ListDatasets();
  Result<Json> GetDataset(const std::string& name, std::optional<int64_t> version);
  Result<Json> ListModels();
  Result<Json> GetModel(const std::string& name, std::optional<int64_t> version);

  // The server that answered last (after redirects), for messages.
  const std::string& current_server() const;

 private:
  struct Impl;
  explicit ApiClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Path of the events endpoint for a query (without follow).
std::string EventsPath(const EventQuery& query);

}  // namespace epoch::client
