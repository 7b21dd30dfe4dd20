#include "engine/event_types.h"

#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>

namespace epoch::engine::ev {

namespace {

// Every payload's field list names each of its members (JobFailed, JobTimedOut and
// JobCancelled add none to AttemptEnd's), so a member cannot be left out of the log.
template <size_t I = 0>
constexpr bool EveryMemberListed() {
  if constexpr (I == std::variant_size_v<Payload>) {
    return true;
  } else {
    using T = std::variant_alternative_t<I, Payload>;
    if constexpr (std::is_base_of_v<AttemptEnd, T>) {
      static_assert(fields::detail::MemberCount<T>() == 1, "an AttemptEnd type adds a member");
    } else {
      static_assert(fields::ListsEveryMember<T>(), "a payload member is missing from its Fields()");
    }
    return EveryMemberListed<I + 1>();
  }
}
static_assert(EveryMemberListed());
static_assert(fields::detail::MemberCount<AttemptEnd>() ==
                  std::tuple_size_v<decltype(AttemptEnd::EndFields())>,
              "an AttemptEnd member is missing from EndFields()");

template <size_t I = 0>
uint32_t VersionOf(std::string_view type) {
  if constexpr (I == std::variant_size_v<Payload>) {
    return 0;
  } else {
    using T = std::variant_alternative_t<I, Payload>;
    return T::kType == type ? T::kVersion : VersionOf<I + 1>(type);
  }
}

using TextDecoder = bool (*)(std::string_view text, Payload* out);

template <class T>
bool DecodeTextAs(std::string_view text, Payload* out) {
  return fields::DecodeText(text, &out->emplace<T>(), kMaxPayloadDepth);
}

// The text decoder of a type's payload at today's version; null for a type this
// Epoch does not know. Replay asks once per event: a hash lookup, not a walk of the
// type names.
TextDecoder FindTextDecoder(std::string_view type) {
  static const auto* const decoders = [] {
    auto* m = new std::unordered_map<std::string_view, TextDecoder>();
    [&]<size_t... I>(std::index_sequence<I...>) {
      (m->emplace(std::variant_alternative_t<I, Payload>::kType,
                  &DecodeTextAs<std::variant_alternative_t<I, Payload>>),
       ...);
    }
    (std::make_index_sequence<std::variant_size_v<Payload>>());
    return m;
  }();
  auto it = decoders->find(type);
  return it == decoders->end() ? nullptr : it->second;
}

template <size_t I = 0>
bool DecodeAs(const RecordedEvent& e, const Json& data, Payload* out, std::string* error,
              bool* known) {
  if constexpr (I == std::variant_size_v<Payload>) {
    *known = false;
    return false;
  } else {
    using T = std::variant_alternative_t<I, Payload>;
    if (T::kType != e.type) return DecodeAs<I + 1>(e, data, out, error, known);
    *known = true;
    T p;
    if (!fields::Decode(data, &p, error)) return false;
    *out = std::move(p);
    return true;
  }
}

std::string Where(std::string_view type, uint32_t from) {
  return std::string(type) + " v" + std::to_string(from);
}

// One step between payload versions: `data` at version `from` becomes from + 1.
// Each is small, written once, and never changes (tests/golden/ holds histories at
// every version it reads).
Status UpcastStep(std::string_view type, uint32_t from, Json* data) {
  if (type == kWorkflowRegistered && from == 1) {
    // v1 left `tenant` out for workflows of the default tenant.
    if (!data->contains("tenant")) (*data)["tenant"] = "default";
    return Status::Ok();
  }
  if (type == kJobQueued && from == 1) {
    // v1 wrote `workers` only for gangs (above 1).
    if (!data->contains("workers")) (*data)["workers"] = 1;
    return Status::Ok();
  }
  return Internal("no upcaster from " + Where(type, from));
}

}  // namespace

uint32_t CurrentVersion(std::string_view type) { return VersionOf(type); }

Result<Json> Upcast(std::string_view type, uint32_t from, Json data) {
  uint32_t current = CurrentVersion(type);
  if (current == 0) {
    return FailedPrecondition("event type " + std::string(type) +
                              " is not one this Epoch knows: the log was written by a newer "
                              "Epoch");
  }
  if (from < 1 || from > current) {
    return FailedPrecondition("payload version " + std::to_string(from) + " of " +
                              std::string(type) + "; this Epoch reads 1 to " +
                              std::to_string(current) + ": the log was written by a newer Epoch");
  }
  if (from < current && !data.is_object()) {
    return Corruption("field data: not a JSON object, cannot upcast " + Where(type, from));
  }
  for (uint32_t v = from; v < current; ++v) RETURN_IF_ERROR(UpcastStep(type, v, &data));
  return data;
}

namespace {

std::string Prefix(const RecordedEvent& e) {
  return "event " + std::to_string(e.position) + " (" + e.type + "): ";
}

// `data` (today's version of e's type) decoded, or the error naming the field.
Result<Payload> DecodeCurrent(const RecordedEvent& e, const Json& data) {
  Payload p;
  std::string error;
  bool known = false;
  if (DecodeAs(e, data, &p, &error, &known)) return p;
  if (!known) {
    return FailedPrecondition(Prefix(e) +
                              "not an event type this Epoch knows: the log was written by a "
                              "newer Epoch");
  }
  return Corruption(Prefix(e) + "field " + error);
}

// e.text, the stored payload at version e.schema.
Result<Payload> DecodeStored(const RecordedEvent& e) {
  const std::string& text = *e.text;
  const uint32_t current = CurrentVersion(e.type);
  if (current != 0 && (e.schema == 0 || e.schema == current)) {
    Payload p;
    if (TextDecoder decode = FindTextDecoder(e.type); decode != nullptr && decode(text, &p)) {
      return p;
    }
  }
  // What DecodeText does not take: parsed, upcast and decoded, each naming its problem.
  auto j = ParseJson(text, kMaxPayloadDepth);
  if (!j.ok()) return Corruption(Prefix(e) + "field data: " + j.status().message());
  auto data = Upcast(e.type, e.schema == 0 ? current : e.schema, std::move(*j));
  if (!data.ok()) return Status(data.status().code(), Prefix(e) + data.status().message());
  if (!data->is_object()) return Corruption(Prefix(e) + "field data: not a JSON object");
  return DecodeCurrent(e, *data);
}

}  // namespace

Result<Payload> DecodeEvent(const RecordedEvent& e) {
  if (e.text.has_value()) return DecodeStored(e);
  const Json* data = &e.data;
  Json upcast;
  uint32_t current = CurrentVersion(e.type);
  if (e.schema != 0 && e.schema != current) {
    auto u = Upcast(e.type, e.schema, e.data);
    if (!u.ok()) return Status(u.status().code(), Prefix(e) + u.status().message());
    upcast = std::move(*u);
    data = &upcast;
  }
  return DecodeCurrent(e, *data);
}

}  // namespace epoch::engine::ev
