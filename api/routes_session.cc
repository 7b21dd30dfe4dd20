// ApiServer's session routes (api/auth.h, "Console sessions"): sign in with a token
// for a session cookie (POST /v1/session), who the caller is and the session's CSRF
// token (GET /v1/session), sign out (DELETE /v1/session).
#include <chrono>
#include <string>

#include "api/auth.h"
#include "api/http_server.h"
#include "api/http_util.h"
#include "api/server_impl.h"
#include "common/clock.h"
#include "common/json.h"

namespace epoch::api {

namespace {

// The cookie: only ever sent back to this origin's HTTPS (browsers count
// http://localhost as secure), never readable by a page's script, never sent along
// with a request another site starts.
std::string SessionCookie(const std::string& value, int64_t max_age_s) {
  return std::string(kSessionCookie) + "=" + value +
         "; Path=/; Max-Age=" + std::to_string(max_age_s) + "; HttpOnly; Secure; SameSite=Strict";
}

Json Who(const Principal& p) {
  return Json{{"user", p.user},
              {"tenant", p.tenant},
              {"role", std::string(Name(p.role))},
              {"token_id", p.token_id}};
}

}  // namespace

void ApiServer::Impl::SessionRoutes() {
  // Public: the token in the body (or the Authorization header) is what signs in.
  Post("/v1/session", Wrap("/v1/session", [this](const Request& req, Response& res) {
         HttpError err;
         auto body = ParseBody(req, &err, /*allow_empty=*/true);
         if (!body.ok()) return WriteError(res, err);
         std::string header = req.Header("Authorization");
         if (body->is_object() && body->contains("token")) {
           if (!(*body)["token"].is_string()) {
             return WriteError(res, {400, "malformed", "token: must be a string", {"token"}});
           }
           header = "Bearer " + (*body)["token"].get<std::string>();
         }
         if (header.empty()) {
           return WriteError(res, {400,
                                   "malformed",
                                   "token: required (the body {\"token\": \"epoch_...\"} or an "
                                   "Authorization: Bearer header)",
                                   {"token"}});
         }
         auto who = tokens->Authenticate(header);
         if (!who.ok()) return WriteError(res, FromStatus(who.status()));
         auto session = sessions->Create(who->token_id, config.session_ttl);
         if (!session.ok()) return WriteError(res, FromStatus(session.status()));
         const int64_t max_age =
             std::chrono::duration_cast<std::chrono::seconds>(config.session_ttl).count();
         res.SetHeader("Set-Cookie", SessionCookie(session->secret, max_age));
         res.SetHeader("Cache-Control", "no-store");
         Json out = Who(*who);
         out["csrf_token"] = session->csrf;
         out["expires_at"] = FormatTime(session->expires);
         spdlog::info("session signed in: {} (token {}), until {}", who->Actor(), who->token_id,
                      FormatTime(session->expires));
         WriteJson(res, 201, out);
       }));

  // Who the caller is; with a session, its expiry and CSRF token (what a console page
  // sends back on writes).
  Get("/v1/session", Wrap("/v1/session", [this](const Request& req, Response& res) {
        Json out = Who(Caller());
        std::string secret = CookieValue(req.Header("Cookie"), kSessionCookie);
        if (!secret.empty() && !req.HasHeader("Authorization")) {
          auto session = sessions->Find(secret);
          if (!session.ok()) return WriteError(res, FromStatus(session.status()));
          out["csrf_token"] = SessionCsrf(secret);
          out["expires_at"] = FormatTime(session->expires);
        }
        res.SetHeader("Cache-Control", "no-store");
        WriteJson(res, 200, out);
      }));

  // Sign out: the session leaves the sessions file, and the cookie is cleared.
  Delete("/v1/session", Wrap("/v1/session", [this](const Request& req, Response& res) {
           std::string secret = CookieValue(req.Header("Cookie"), kSessionCookie);
           if (secret.empty() || req.HasHeader("Authorization")) {
             return WriteError(res, {400,
                                     "malformed",
                                     "no session to sign out of: DELETE /v1/session takes the "
                                     "session cookie (a token is revoked with `epochctl admin "
                                     "token revoke`)",
                                     {}});
           }
           Status st = sessions->Delete(secret);
           if (!st.ok()) return WriteError(res, FromStatus(st));
           spdlog::info("session signed out: {}", Caller().Actor());
           res.SetHeader("Set-Cookie", SessionCookie("", 0));
           res.status = 204;
         }));
}

}  // namespace epoch::api
