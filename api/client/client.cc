#include "api/client/client.h"

#include <httplib.h>

#include <algorithm>
#include <cctype>
#include <map>

namespace epoch::client {

namespace {

constexpr size_t kMaxErrorBody = 1 << 20;  // an error body beyond this is cut

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// "NotFound", "kNotFound", "NOT_FOUND", "not-found" -> "notfound".
std::string NormaliseCode(std::string_view code) {
  if (code.size() > 1 && code[0] == 'k' && std::isupper(static_cast<unsigned char>(code[1]))) {
    code.remove_prefix(1);
  }
  std::string out;
  for (char c : code) {
    if (c == '_' || c == '-' || c == ' ') continue;
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

std::optional<StatusCode> CodeFromName(std::string_view name) {
  static constexpr StatusCode kAll[] = {
      StatusCode::kInvalidArgument,    StatusCode::kNotFound,    StatusCode::kConflict,
      StatusCode::kFailedPrecondition, StatusCode::kUnavailable, StatusCode::kResourceExhausted,
      StatusCode::kCorruption,         StatusCode::kInternal,    StatusCode::kUnauthenticated,
      StatusCode::kPermissionDenied};
  std::string want = NormaliseCode(name);
  if (want.empty()) return std::nullopt;
  for (StatusCode c : kAll) {
    if (NormaliseCode(StatusCodeName(c)) == want) return c;
  }
  return std::nullopt;
}

StatusCode CodeFromHttp(int status) {
  switch (status) {
    case 400:
    case 415:
    case 422:
      return StatusCode::kInvalidArgument;
    case 401:
      return StatusCode::kUnauthenticated;
    case 403:
      return StatusCode::kPermissionDenied;
    case 404:
      return StatusCode::kNotFound;
    case 409:
      return StatusCode::kConflict;
    case 412:
      return StatusCode::kFailedPrecondition;
    case 413:
    case 429:
      return StatusCode::kResourceExhausted;
    case 502:
    case 503:
    case 504:
      return StatusCode::kUnavailable;
    default:
      break;
  }
  if (status >= 400 && status < 500) return StatusCode::kInvalidArgument;
  return StatusCode::kInternal;
}

std::string DetailText(const Json& d) {
  if (d.is_string()) return d.get<std::string>();
  if (d.is_object() && d.contains("message")) {
    std::string msg =
        d["message"].is_string() ? d["message"].get<std::string>() : d["message"].dump();
    std::string path;
    for (const char* key : {"path", "field", "at"}) {
      if (d.contains(key) && d[key].is_string()) {
        path = d[key].get<std::string>();
        break;
      }
    }
    return path.empty() ? msg : path + ": " + msg;
  }
  return d.dump();
}

bool IsSuccess(int status) { return status >= 200 && status < 300; }
bool IsRedirect(int status) { return status == 307 || status == 308; }

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// "http://h:1/v1/runs?x=1" -> {"http://h:1", "/v1/runs?x=1"}.
std::pair<std::string, std::string> SplitUrl(std::string_view url) {
  size_t scheme = url.find("://");
  size_t slash = url.find('/', scheme == std::string_view::npos ? 0 : scheme + 3);
  if (slash == std::string_view::npos) return {std::string(url), "/"};
  return {std::string(url.substr(0, slash)), std::string(url.substr(slash))};
}

// The origin of an absolute http(s) URL, normalised: "HTTPS://Host/x" ->
// "https://host:443" (scheme and host lower-cased, the default port made explicit,
// userinfo dropped). "" when it is not an absolute http(s) URL.
std::string OriginOf(std::string_view url) {
  size_t sep = url.find("://");
  if (sep == std::string_view::npos) return "";
  std::string scheme = Lower(url.substr(0, sep));
  if (scheme != "http" && scheme != "https") return "";
  std::string_view authority = url.substr(sep + 3);
  authority = authority.substr(0, authority.find_first_of("/?#"));
  if (size_t at = authority.rfind('@'); at != std::string_view::npos) {
    authority.remove_prefix(at + 1);
  }
  std::string_view host = authority, port;
  size_t colon = authority.rfind(':');
  if (colon != std::string_view::npos && authority.find(']', colon) == std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty()) return "";
  std::string p = port.empty() ? (scheme == "https" ? "443" : "80") : std::string(port);
  return scheme + "://" + Lower(host) + ":" + p;
}

// Transport errors after which the request surely never reached the server.
bool NotSent(httplib::Error e) {
  return e == httplib::Error::Connection || e == httplib::Error::ConnectionTimeout ||
         e == httplib::Error::BindIPAddress || e == httplib::Error::SSLConnection;
}

bool IsSse(std::string_view content_type) {
  return StartsWith(Lower(Trim(content_type)), "text/event-stream");
}

}  // namespace

// ---- SSE --------------------------------------------------------------------------

bool SseParser::Feed(std::string_view chunk) {
  for (char c : chunk) {
    if (skip_lf_) {
      skip_lf_ = false;
      if (c == '\n') continue;
    }
    if (c == '\r' || c == '\n') {
      skip_lf_ = (c == '\r');
      std::string line = std::move(buf_);
      buf_.clear();
      if (!Line(line)) return false;
    } else {
      buf_ += c;
    }
  }
  return true;
}

bool SseParser::Line(std::string_view line) {
  if (line.empty()) {
    bool keep_going = true;
    if (has_data_) keep_going = cb_(SseEvent{last_id_, event_, data_});
    event_.clear();
    data_.clear();
    has_data_ = false;
    return keep_going;
  }
  if (line.front() == ':') return true;  // comment (servers use it as a keep-alive)
  std::string_view field = line, value;
  if (size_t colon = line.find(':'); colon != std::string_view::npos) {
    field = line.substr(0, colon);
    value = line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (has_data_) data_ += '\n';
    data_ += value;
    has_data_ = true;
  } else if (field == "event") {
    event_ = std::string(value);
  } else if (field == "id") {
    if (value.find('\0') == std::string_view::npos) last_id_ = std::string(value);
  }
  return true;  // retry: and unknown fields are ignored
}

// ---- free helpers ---------------------------------------------------------------------

Status StatusFromHttpError(int http_status, std::string_view body) {
  StatusCode code = CodeFromHttp(http_status);
  auto parsed = ParseJson(body);
  if (parsed.ok() && parsed->is_object() && parsed->contains("error")) {
    const Json& err = (*parsed)["error"];
    if (err.is_object()) {
      if (err.contains("code") && err["code"].is_string()) {
        if (auto c = CodeFromName(err["code"].get<std::string>())) code = *c;
      }
      std::string message;
      if (err.contains("message") && err["message"].is_string()) {
        message = err["message"].get<std::string>();
      }
      if (message.empty()) message = "HTTP " + std::to_string(http_status);
      std::vector<std::string> details;
      if (err.contains("details") && err["details"].is_array()) {
        for (const Json& d : err["details"]) details.push_back(DetailText(d));
      }
      return Status(code, std::move(message), std::move(details));
    }
    if (err.is_string()) return Status(code, err.get<std::string>());
  }
  std::string message = "HTTP " + std::to_string(http_status);
  std::string_view text = Trim(body);
  if (!text.empty()) {
    message += ": ";
    message += text.substr(0, 200);
  }
  return Status(code, std::move(message));
}

std::string UrlEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string WithQuery(std::string path, const Query& query) {
  char sep = path.find('?') == std::string::npos ? '?' : '&';
  for (const auto& [k, v] : query) {
    if (v.empty()) continue;
    path += sep;
    path += UrlEncode(k);
    path += '=';
    path += UrlEncode(v);
    sep = '&';
  }
  return path;
}

Result<std::vector<std::string>> SplitServers(std::string_view csv) {
  std::vector<std::string> out;
  while (true) {
    size_t comma = csv.find(',');
    std::string_view item = Trim(csv.substr(0, comma));
    if (!item.empty()) {
      std::string url(item);
      if (url.find("://") == std::string::npos) url = "http://" + url;
      while (!url.empty() && url.back() == '/') url.pop_back();
      std::string lower = Lower(url);
      if (!StartsWith(lower, "http://") && !StartsWith(lower, "https://")) {
        return InvalidArgument("server URL '" + url + "' is not http:// or https://");
      }
      auto [base, path] = SplitUrl(url);
      if (path != "/") {
        return InvalidArgument("server URL '" + url + "' must not have a path (use " + base + ")");
      }
      if (base.size() <= lower.find("://") + 3) {
        return InvalidArgument("server URL '" + url + "' has no host");
      }
      out.push_back(url);
    }
    if (comma == std::string_view::npos) break;
    csv.remove_prefix(comma + 1);
  }
  if (out.empty()) return InvalidArgument("no server URL given");
  return out;
}

Json ParseParamValue(std::string_view value) {
  auto parsed = ParseJson(value);
  if (parsed.ok() && !Trim(value).empty()) return *parsed;
  return Json(std::string(value));
}

Result<Json> ParseKeyValues(const std::vector<std::string>& items, bool json_values) {
  Json out = Json::object();
  for (const std::string& item : items) {
    size_t eq = item.find('=');
    if (eq == std::string::npos) {
      return InvalidArgument("'" + item + "' is not of the form key=value");
    }
    std::string key = item.substr(0, eq);
    std::string_view value = std::string_view(item).substr(eq + 1);
    if (key.empty()) return InvalidArgument("'" + item + "' has an empty key");
    if (out.contains(key)) return InvalidArgument("'" + key + "' is given twice");
    out[key] = json_values ? ParseParamValue(value) : Json(std::string(value));
  }
  return out;
}

std::string EventsPath(const EventQuery& q) {
  std::string path = q.run.empty() ? "/v1/events" : "/v1/runs/" + UrlEncode(q.run) + "/events";
  Query query;
  if (q.after) query.emplace_back("after", std::to_string(*q.after));
  query.emplace_back("type", q.type);
  query.emplace_back("stream", q.stream);
  if (q.limit) query.emplace_back("limit", std::to_string(*q.limit));
  return WithQuery(std::move(path), query);
}

// ---- ApiClient ----------------------------------------------------------------------

struct ApiClient::Impl {
  ClientOptions options;
  std::map<std::string, std::unique_ptr<httplib::Client>> clients;
  std::string preferred;  // the server that answered last (or a redirect's target): tried first
  std::string current;

  enum class Method { kGet, kPost };
  struct Request {
    Method method = Method::kGet;
    std::string path;
    std::string body;
    Headers headers;
    const StreamHandlers* stream = nullptr;
    Micros read_timeout{};
  };

  // What one exchange with one server gave.
  struct Exchange {
    httplib::Error error = httplib::Error::Success;
    bool stopped = false;       // a stream handler returned false
    bool body_started = false;  // a 2xx stream body began: no failover past this point
    Response response;
    std::string location;
  };

  Result<httplib::Client*> ClientFor(const std::string& base) {
    auto it = clients.find(base);
    if (it != clients.end()) return it->second.get();
    auto cli = std::make_unique<httplib::Client>(base);
    if (!cli->is_valid()) return InvalidArgument("cannot use server URL '" + base + "'");
    cli->set_tcp_nodelay(true);
    auto connect = options.connect_timeout.count();
    cli->set_connection_timeout(connect / 1000000, connect % 1000000);
    if (!options.token.empty()) cli->set_bearer_token_auth(options.token);
    if (StartsWith(Lower(base), "https://")) {
      if (!options.ca_cert_path.empty()) cli->set_ca_cert_path(options.ca_cert_path);
      cli->enable_server_certificate_verification(!options.insecure);
    }
    httplib::Client* raw = cli.get();
    clients.emplace(base, std::move(cli));
    return raw;
  }

  Exchange SendOnce(httplib::Client& cli, const std::string& base, const Request& req) {
    Exchange ex;
    ex.response.server = base;
    auto rt = req.read_timeout.count();
    cli.set_read_timeout(rt / 1000000, rt % 1000000);
    httplib::Headers headers;
    for (const auto& [k, v] : req.headers) headers.emplace(k, v);

    auto capture = [&ex](const httplib::Response& r) {
      ex.response.status = r.status;
      ex.response.content_type = r.get_header_value("Content-Type");
      ex.location = r.get_header_value("Location");
      ex.response.headers.clear();
      for (const auto& [k, v] : r.headers) ex.response.headers.emplace_back(k, v);
    };

    if (req.method == Method::kPost) {
      headers.emplace("Accept", "application/json");
      auto res = cli.Post(req.path, headers, req.body, "application/json");
      ex.error = res.error();
      if (res) {
        capture(*res);
        ex.response.body = res->body;
      }
      return ex;
    }

    std::optional<SseParser> sse;
    auto res = cli.Get(
        req.path, headers,
        [&](const httplib::Response& r) {
          capture(r);
          if (req.stream && IsSuccess(r.status) && req.stream->on_headers) {
            req.stream->on_headers(r.status, ex.response.headers);
          }
          if (req.stream && IsSuccess(r.status) && req.stream->on_event &&
              IsSse(ex.response.content_type)) {
            sse.emplace(req.stream->on_event);
          }
          return true;
        },
        [&](const char* data, size_t len) {
          std::string_view chunk(data, len);
          if (req.stream == nullptr || !IsSuccess(ex.response.status)) {
            if (ex.response.body.size() < kMaxErrorBody || req.stream == nullptr) {
              ex.response.body.append(chunk);
            }
            return true;
          }
          ex.body_started = true;
          bool more = true;
          if (sse) {
            more = sse->Feed(chunk);
          } else if (req.stream->on_chunk && !IsSse(ex.response.content_type)) {
            more = req.stream->on_chunk(chunk);
          }
          if (!more) ex.stopped = true;
          return more;
        });
    ex.error = res.error();
    if (res && ex.response.status == 0) capture(*res);
    return ex;
  }

  // Where a redirect from `from` to `to` may go (both base URLs): the same origin, or
  // another of the configured servers with the same scheme (never https to http). The
  // token goes with every request, so it must never follow a redirect anywhere else.
  // Returns the base URL to use (the configured spelling); kFailedPrecondition if not.
  Result<std::string> RedirectTarget(const std::string& from, const std::string& to) const {
    const std::string from_origin = OriginOf(from), to_origin = OriginOf(to);
    if (to_origin.empty()) {
      return FailedPrecondition(from + " redirected to '" + to + "', which is not an http(s) URL");
    }
    if (to_origin == from_origin) return from;
    const std::string from_scheme = from_origin.substr(0, from_origin.find(':'));
    const std::string to_scheme = to_origin.substr(0, to_origin.find(':'));
    if (from_scheme == "https" && to_scheme != "https") {
      return FailedPrecondition(from + " redirected to " + to +
                                ": not following a redirect from https to http");
    }
    for (const auto& s : options.servers) {
      if (OriginOf(s) == to_origin && to_scheme == from_scheme) return s;
    }
    return FailedPrecondition(from + " redirected to " + to +
                              ", which is not one of the servers given (--server); not "
                              "following it (add it to --server if it is yours)");
  }

  Result<Response> Send(Request req) {
    std::vector<std::string> order;
    if (!preferred.empty()) order.push_back(preferred);
    for (const auto& s : options.servers) {
      if (std::find(order.begin(), order.end(), s) == order.end()) order.push_back(s);
    }
    bool idempotent = req.method == Method::kGet ||
                      std::any_of(req.headers.begin(), req.headers.end(), [](const auto& h) {
                        return Lower(h.first) == "idempotency-key";
                      });
    std::vector<std::string> tried;
    Status last_error;
    const std::string original_path = req.path;
    for (size_t i = 0; i < order.size(); ++i) {
      std::string base = order[i];
      req.path = original_path;
      for (int hops = 0;; ++hops) {
        ASSIGN_OR_RETURN(httplib::Client * cli, ClientFor(base));
        Exchange ex = SendOnce(*cli, base, req);
        current = base;
        if (ex.stopped) return std::move(ex.response);
        if (ex.error != httplib::Error::Success) {
          std::string what = base + ": " + httplib::to_string(ex.error);
          if (ex.body_started) {
            return Unavailable("stream from " + base + " broke (" + httplib::to_string(ex.error) +
                               ")");
          }
          if (!NotSent(ex.error) && !idempotent) {
            return Unavailable("POST " + req.path + " to " + base + " failed after it was sent (" +
                               httplib::to_string(ex.error) +
                               "); it may have succeeded: check before retrying");
          }
          if (base == preferred) preferred.clear();
          tried.push_back(what);
          last_error = Unavailable("cannot reach any server (" + [&] {
            std::string s;
            for (const auto& t : tried) s += (s.empty() ? "" : "; ") + t;
            return s;
          }() + ")");
          break;  // next server
        }
        int status = ex.response.status;
        if (IsRedirect(status)) {
          if (ex.location.empty())
            return Internal(base + " answered " + std::to_string(status) +
                            " without a Location header");
          if (hops + 1 > options.max_redirects) {
            return Unavailable("more than " + std::to_string(options.max_redirects) +
                               " redirects, last to " + ex.location);
          }
          if (ex.location.front() == '/') {
            req.path = ex.location;  // the same server
            continue;
          }
          auto [new_base, new_path] = SplitUrl(ex.location);
          ASSIGN_OR_RETURN(std::string target, RedirectTarget(base, new_base));
          base = target;
          req.path = new_path;
          preferred = target;
          continue;
        }
        if (status == 503 && i + 1 < order.size()) {
          // A standby that does not know the leader: another server may be it.
          last_error = StatusFromHttpError(status, ex.response.body);
          if (base == preferred) preferred.clear();
          break;
        }
        if (!IsSuccess(status)) return StatusFromHttpError(status, ex.response.body);
        // Stay with the server that answered: after a submit, reads then go to the
        // leader that wrote the run rather than to a standby that may lag behind it.
        preferred = base;
        return std::move(ex.response);
      }
    }
    return last_error;
  }
};

ApiClient::ApiClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ApiClient::~ApiClient() = default;

Result<std::unique_ptr<ApiClient>> ApiClient::Create(ClientOptions options) {
  if (options.servers.empty()) return InvalidArgument("no server URL given");
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  for (const std::string& s : impl->options.servers) {
    RETURN_IF_ERROR(impl->ClientFor(s).status());
  }
  impl->current = impl->options.servers.front();
  return std::unique_ptr<ApiClient>(new ApiClient(std::move(impl)));
}

const std::string& ApiClient::current_server() const { return impl_->current; }

Result<Response> ApiClient::Get(const std::string& path_and_query) {
  Impl::Request req;
  req.path = path_and_query;
  req.headers = {{"Accept", "application/json"}};
  req.read_timeout = impl_->options.read_timeout;
  return impl_->Send(std::move(req));
}

Result<Response> ApiClient::Post(const std::string& path, const Json& body,
                                 const Headers& headers) {
  Impl::Request req;
  req.method = Impl::Method::kPost;
  req.path = path;
  req.body = body.dump();
  req.headers = headers;
  req.read_timeout = impl_->options.read_timeout;
  return impl_->Send(std::move(req));
}

namespace {
Result<Json> BodyJson(const Response& r) {
  if (Trim(r.body).empty()) return Json::object();
  auto j = ParseJson(r.body);
  if (!j.ok()) return j.status().WithContext("answer from " + r.server);
  return j;
}
}  // namespace

Result<Json> ApiClient::GetJson(const std::string& path_and_query) {
  ASSIGN_OR_RETURN(Response r, Get(path_and_query));
  return BodyJson(r);
}

Result<WriteResult> ApiClient::PostJson(const std::string& path, const Json& body,
                                        const Headers& headers) {
  ASSIGN_OR_RETURN(Response r, Post(path, body, headers));
  ASSIGN_OR_RETURN(Json j, BodyJson(r));
  return WriteResult{r.status, std::move(j)};
}

Status ApiClient::Stream(const std::string& path_and_query, const Headers& headers,
                         const StreamHandlers& handlers, std::optional<Micros> idle_timeout) {
  Impl::Request req;
  req.path = path_and_query;
  req.headers = headers;
  req.headers.emplace_back("Accept", "text/event-stream, text/plain, */*");
  req.stream = &handlers;
  req.read_timeout = idle_timeout.value_or(impl_->options.stream_idle_timeout);
  return impl_->Send(std::move(req)).status();
}

Result<WriteResult> ApiClient::RegisterWorkflow(const Json& definition) {
  return PostJson("/v1/workflows", definition);
}

Result<Json> ApiClient::ListWorkflows() { return GetJson("/v1/workflows"); }

Result<Json> ApiClient::GetWorkflow(const std::string& name, std::optional<int64_t> version) {
  std::string path = "/v1/workflows/" + UrlEncode(name);
  if (version) path += "/versions/" + std::to_string(*version);
  return GetJson(path);
}

Result<WriteResult> ApiClient::SubmitRun(const SubmitRunRequest& r) {
  Json body = {{"workflow", r.workflow}, {"params", r.params}, {"labels", r.labels}};
  if (r.version) body["version"] = *r.version;
  Headers headers;
  if (!r.idempotency_key.empty()) headers.emplace_back("Idempotency-Key", r.idempotency_key);
  return PostJson("/v1/runs", body, headers);
}

Result<Json> ApiClient::GetRun(const std::string& id) {
  return GetJson("/v1/runs/" + UrlEncode(id));
}
Result<Json> ApiClient::GetRunHistory(const std::string& id) {
  return GetJson("/v1/runs/" + UrlEncode(id) + "/history");
}

Result<Json> ApiClient::ListRuns(const RunListQuery& q) {
  Query query = {{"state", q.state}, {"workflow", q.workflow}};
  for (const auto& l : q.labels) query.emplace_back("label", l);
  if (q.limit) query.emplace_back("limit", std::to_string(*q.limit));
  query.emplace_back("cursor", q.cursor);
  return GetJson(WithQuery("/v1/runs", query));
}

Result<WriteResult> ApiClient::CancelRun(const std::string& id) {
  return PostJson("/v1/runs/" + UrlEncode(id) + "/cancel", Json::object());
}

Result<WriteResult> ApiClient::RetryRun(const std::string& id) {
  return PostJson("/v1/runs/" + UrlEncode(id) + "/retry", Json::object());
}

Result<Json> ApiClient::ListEvents(const EventQuery& query) { return GetJson(EventsPath(query)); }

Status ApiClient::FollowEvents(const EventQuery& query,
                               const std::function<bool(const Json&)>& on_event,
                               std::optional<Micros> idle_timeout) {
  Status bad;
  StreamHandlers handlers;
  handlers.on_event = [&](const SseEvent& e) {
    if (e.event == "ping" || e.event == "heartbeat" || e.event == "keepalive") return true;
    auto j = ParseJson(e.data);
    if (!j.ok()) {
      bad =
          Corruption("event stream sent a data payload that is not JSON: " + e.data.substr(0, 200));
      return false;
    }
    return on_event(*j);
  };
  handlers.on_chunk = [&](std::string_view) {
    bad = Internal("the server did not answer with text/event-stream");
    return false;
  };
  Headers headers;
  if (query.after) headers.emplace_back("Last-Event-ID", std::to_string(*query.after));
  Status st =
      Stream(WithQuery(EventsPath(query), {{"follow", "true"}}), headers, handlers, idle_timeout);
  if (!bad.ok()) return bad;
  return st;
}

namespace {
// The first header of that name (case-insensitive), "" if none.
std::string HeaderValue(const Headers& headers, std::string_view name) {
  for (const auto& [k, v] : headers) {
    if (Lower(k) == Lower(name)) return v;
  }
  return "";
}
uint64_t HeaderNumber(const Headers& headers, std::string_view name) {
  std::string v = HeaderValue(headers, name);
  if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 19) {
    return 0;
  }
  return std::stoull(v);
}
}  // namespace

Result<Json> ApiClient::GetMetrics(const std::string& run, const std::string& step,
                                   const MetricsQuery& q) {
  Query query = {{"name", q.name}};
  if (q.attempt) query.emplace_back("attempt", std::to_string(*q.attempt));
  return GetJson(
      WithQuery("/v1/runs/" + UrlEncode(run) + "/steps/" + UrlEncode(step) + "/metrics", query));
}

Status ApiClient::GetLogs(const std::string& run, const std::string& step, const LogQuery& q,
                          const std::function<bool(std::string_view)>& on_text) {
  std::string path = "/v1/runs/" + UrlEncode(run) + "/steps/" + UrlEncode(step) + "/logs";
  Query query;
  if (q.attempt) query.emplace_back("attempt", std::to_string(*q.attempt));
  if (q.tail) query.emplace_back("tail", std::to_string(*q.tail));
  if (q.follow) query.emplace_back("follow", "true");
  path = WithQuery(std::move(path), query);
  const std::optional<Micros> timeout =
      q.follow ? std::nullopt : std::optional<Micros>(impl_->options.read_timeout);
  // A plain GET of a log larger than the server's api.maxLogResponseBytes answers only
  // its end (Epoch-Log-Offset > 0): then the whole log is read from the start, a range
  // at a time.
  uint64_t size = 0, offset = 0;
  StreamHandlers handlers;
  bool capped = false;
  handlers.on_headers = [&](int, const Headers& h) {
    size = HeaderNumber(h, "Epoch-Log-Size");
    offset = HeaderNumber(h, "Epoch-Log-Offset");
    capped = !q.tail && !q.follow && offset > 0;
  };
  handlers.on_chunk = [&](std::string_view text) { return !capped && on_text(text); };
  handlers.on_event = [&](const SseEvent& e) {
    if (e.event == "ping" || e.event == "heartbeat" || e.event == "keepalive") return true;
    // An end event and a closed stream both mean the log is complete.
    if (e.event == "end" || e.event == "eof" || e.event == "done") return false;
    // One event per log line (SSE cannot end a payload in a newline).
    return on_text(e.data) && on_text("\n");
  };
  Status st = Stream(path, {}, handlers, timeout);
  if (!st.ok() || !capped) return st;
  uint64_t total = size;
  for (uint64_t from = 0; from < total;) {
    uint64_t next = from;
    StreamHandlers part;
    part.on_headers = [&](int status, const Headers& h) {
      // "bytes FIRST-LAST/SIZE"; a server that ignores Range sends everything (200).
      std::string range = HeaderValue(h, "Content-Range");
      size_t dash = range.find('-'), slash = range.find('/');
      if (status == 206 && dash != std::string::npos && slash != std::string::npos) {
        next = std::stoull(range.substr(dash + 1, slash - dash - 1)) + 1;
      } else {
        next = total;
      }
    };
    part.on_chunk = on_text;
    Status got = Stream(path, {{"Range", "bytes=" + std::to_string(from) + "-" +
                                             std::to_string(total - 1)}},
                        part, timeout);
    if (!got.ok()) return got;
    if (next <= from) return Internal("reading the log by range made no progress at " +
                                      std::to_string(from));
    from = next;
  }
  return Status::Ok();
}

Result<Json> ApiClient::ListContainers() { return GetJson("/v1/containers"); }
Result<Json> ApiClient::GetCluster() { return GetJson("/v1/cluster"); }
Result<Json> ApiClient::GetUsage() { return GetJson("/v1/usage"); }
Result<Json> ApiClient::VerifyAudit(const std::string& query) {
  return GetJson("/v1/audit/verify" + (query.empty() ? "" : "?" + query));
}

namespace {
std::string ArtifactPath(std::string_view base, const std::string& name,
                         std::optional<int64_t> version) {
  std::string path = std::string(base) + "/" + UrlEncode(name);
  if (version) path += "/versions/" + std::to_string(*version);
  return path;
}

// One version, or every version: the server pages them (1,000 at a time); this
// follows next_cursor and answers them all in one "versions" list.
Result<Json> GetArtifact(ApiClient& api, std::string_view base, const std::string& name,
                         std::optional<int64_t> version) {
  std::string path = ArtifactPath(base, name, version);
  if (version) return api.GetJson(path);
  ASSIGN_OR_RETURN(Json all, api.GetJson(path));
  Json next = all.value("next_cursor", Json());
  while (next.is_string()) {
    ASSIGN_OR_RETURN(Json page, api.GetJson(path + "?cursor=" + next.get<std::string>()));
    if (!page.contains("versions") || !page["versions"].is_array()) break;
    for (auto& v : page["versions"]) all["versions"].push_back(std::move(v));
    next = page.value("next_cursor", Json());
  }
  all["next_cursor"] = nullptr;
  return all;
}
}  // namespace

Result<Json> ApiClient::ListDatasets() { return GetJson("/v1/datasets"); }
Result<Json> ApiClient::GetDataset(const std::string& name, std::optional<int64_t> version) {
  return GetArtifact(*this, "/v1/datasets", name, version);
}
Result<Json> ApiClient::ListModels() { return GetJson("/v1/models"); }
Result<Json> ApiClient::GetModel(const std::string& name, std::optional<int64_t> version) {
  return GetArtifact(*this, "/v1/models", name, version);
}

}  // namespace epoch::client
