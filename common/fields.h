// Field lists: one list per struct drives both its JSON encoding and a decoding that
// refuses, naming the field, instead of guessing.
//
//   struct Resources {
//     int64_t cpu_millis = 0;
//     std::optional<std::string> note;
//     static constexpr auto Fields() {
//       return std::tuple{fields::F("cpu_millis", &Resources::cpu_millis),
//                         fields::F("note", &Resources::note)};
//     }
//   };
//   Json j = fields::Encode(r);                       // {"cpu_millis": 100}
//   std::string err;
//   if (!fields::Decode(j, &r, &err)) ...             // err: "cpu_millis: expected an integer, got
//   string"
//
// Replay reads stored payloads straight from their JSON text with DecodeText, which
// builds no Json document except for the Json members themselves:
//
//   if (!fields::DecodeText(text, &r, 256)) ... ParseJson(text) then Decode, as above
//
// It decodes only text it can take whole and gives up (false) on anything else,
// leaving the errors to ParseJson and Decode; what it does decode is exactly what
// they would give.
//
// Member types: std::string, bool, int, int64_t, uint64_t, double, Json (with a shape:
// F = any value, Obj = an object, Arr = an array), std::optional<T> (absent or null is
// nullopt; nullopt is not written), std::vector<T>, and structs that have Fields().
// A member that is not optional must be present. Keys the list does not name are
// ignored (they are neither read nor kept).
//
// Thread-safety: functions over values.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/json.h"

namespace epoch::fields {

enum class Shape { kAny, kObject, kArray };

template <class T, class M>
struct Field {
  std::string_view name;
  M T::*member;
  Shape shape = Shape::kAny;
};

template <class T, class M>
constexpr Field<T, M> F(std::string_view name, M T::*member) {
  return {name, member, Shape::kAny};
}
// A Json (or optional Json) member that must be an object / an array.
template <class T, class M>
constexpr Field<T, M> Obj(std::string_view name, M T::*member) {
  return {name, member, Shape::kObject};
}
template <class T, class M>
constexpr Field<T, M> Arr(std::string_view name, M T::*member) {
  return {name, member, Shape::kArray};
}

template <class T>
concept HasFields = requires {
  T::Fields();
};

namespace detail {

template <class>
struct IsOptional : std::false_type {};
template <class U>
struct IsOptional<std::optional<U>> : std::true_type {};
template <class>
struct IsVector : std::false_type {};
template <class U>
struct IsVector<std::vector<U>> : std::true_type {};

std::string_view KindName(const Json& j);

// A decode failure: where (a path relative to the value being decoded) and what.
struct Error {
  std::string path;
  std::string problem;
};

inline void Prefix(Error* e, std::string_view head) {
  if (e->path.empty()) {
    e->path = std::string(head);
  } else if (e->path[0] == '[') {
    e->path = std::string(head) + e->path;
  } else {
    e->path = std::string(head) + "." + e->path;
  }
}

inline bool Fail(Error* e, std::string problem) {
  e->path.clear();
  e->problem = std::move(problem);
  return false;
}

inline bool CheckShape(const Json& j, Shape shape, Error* e) {
  if (shape == Shape::kObject && !j.is_object()) {
    return Fail(e, "expected an object, got " + std::string(KindName(j)));
  }
  if (shape == Shape::kArray && !j.is_array()) {
    return Fail(e, "expected an array, got " + std::string(KindName(j)));
  }
  return true;
}

template <class T>
bool DecodeStruct(const Json& j, T* out, Error* e);

template <class M>
bool DecodeValue(const Json& j, Shape shape, M* out, Error* e) {
  if constexpr (std::is_same_v<M, Json>) {
    if (!CheckShape(j, shape, e)) return false;
    *out = j;
    return true;
  } else if constexpr (IsOptional<M>::value) {
    if (j.is_null()) {
      out->reset();
      return true;
    }
    typename M::value_type v{};
    if (!DecodeValue(j, shape, &v, e)) return false;
    *out = std::move(v);
    return true;
  } else if constexpr (std::is_same_v<M, std::string>) {
    if (!j.is_string()) return Fail(e, "expected a string, got " + std::string(KindName(j)));
    *out = j.get<std::string>();
    return true;
  } else if constexpr (std::is_same_v<M, bool>) {
    if (!j.is_boolean()) return Fail(e, "expected a boolean, got " + std::string(KindName(j)));
    *out = j.get<bool>();
    return true;
  } else if constexpr (std::is_integral_v<M>) {
    if (!j.is_number_integer()) {
      return Fail(e, "expected an integer, got " + std::string(KindName(j)));
    }
    if (j.is_number_unsigned()) {
      uint64_t v = j.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<M>::max())) {
        return Fail(e, std::to_string(v) + " is out of range");
      }
      *out = static_cast<M>(v);
      return true;
    }
    int64_t v = j.get<int64_t>();
    if constexpr (std::is_unsigned_v<M>) {
      if (v < 0) return Fail(e, std::to_string(v) + " is negative");
      if (static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<M>::max())) {
        return Fail(e, std::to_string(v) + " is out of range");
      }
    } else {
      if (v < static_cast<int64_t>(std::numeric_limits<M>::min()) ||
          v > static_cast<int64_t>(std::numeric_limits<M>::max())) {
        return Fail(e, std::to_string(v) + " is out of range");
      }
    }
    *out = static_cast<M>(v);
    return true;
  } else if constexpr (std::is_floating_point_v<M>) {
    if (!j.is_number()) return Fail(e, "expected a number, got " + std::string(KindName(j)));
    *out = j.get<M>();
    return true;
  } else if constexpr (IsVector<M>::value) {
    if (!j.is_array()) return Fail(e, "expected an array, got " + std::string(KindName(j)));
    M v;
    v.reserve(j.size());
    for (size_t i = 0; i < j.size(); ++i) {
      typename M::value_type x{};
      if (!DecodeValue(j[i], Shape::kAny, &x, e)) {
        Prefix(e, "[" + std::to_string(i) + "]");
        return false;
      }
      v.push_back(std::move(x));
    }
    *out = std::move(v);
    return true;
  } else if constexpr (HasFields<M>) {
    return DecodeStruct(j, out, e);
  } else {
    static_assert(sizeof(M) == 0, "fields: no decoding for this member type");
  }
}

template <class M>
Json EncodeValue(const M& v);

template <class T>
Json EncodeStruct(const T& v) {
  Json j = Json::object();
  std::apply(
      [&](const auto&... f) {
        [[maybe_unused]] auto put = [&](const auto& field) {
          const auto& m = v.*(field.member);
          using M = std::remove_cvref_t<decltype(m)>;
          if constexpr (IsOptional<M>::value) {
            if (!m) return;
            j[std::string(field.name)] = EncodeValue(*m);
          } else {
            j[std::string(field.name)] = EncodeValue(m);
          }
        };
        (put(f), ...);
      },
      T::Fields());
  return j;
}

template <class M>
Json EncodeValue(const M& v) {
  if constexpr (IsVector<M>::value) {
    Json a = Json::array();
    for (const auto& x : v) a.push_back(EncodeValue(x));
    return a;
  } else if constexpr (HasFields<M>) {
    return EncodeStruct(v);
  } else {
    return Json(v);
  }
}

template <class T>
bool DecodeStruct(const Json& j, T* out, Error* e) {
  if (!j.is_object()) return Fail(e, "expected an object, got " + std::string(KindName(j)));
  bool ok = true;
  std::apply(
      [&](const auto&... f) {
        [[maybe_unused]] auto get = [&](const auto& field) {
          if (!ok) return;
          auto& m = out->*(field.member);
          using M = std::remove_cvref_t<decltype(m)>;
          auto it = j.find(field.name);
          if (it == j.end()) {
            if constexpr (IsOptional<M>::value) {
              m.reset();
            } else {
              ok = Fail(e, "missing");
              e->path = std::string(field.name);
            }
            return;
          }
          if (!DecodeValue(*it, field.shape, &m, e)) {
            Prefix(e, field.name);
            ok = false;
          }
        };
        (get(f), ...);
      },
      T::Fields());
  return ok;
}

// A cursor over JSON text for DecodeText. Each read consumes one well-formed token or
// value of the kind asked for (whitespace before it skipped) and returns true, or
// returns false: the text is not one DecodeText takes, and it gives up.
class TextReader {
 public:
  TextReader(std::string_view text, int max_depth) : text_(text), max_depth_(max_depth) {}

  int max_depth() const { return max_depth_; }
  // The next non-space byte is c: consume it.
  bool Consume(char c) {
    SkipSpace();
    if (at_ < text_.size() && text_[at_] == c) {
      ++at_;
      return true;
    }
    return false;
  }
  // Only whitespace is left.
  bool AtEnd() {
    SkipSpace();
    return at_ == text_.size();
  }
  // A string with no Unicode escape (backslash-u), of well-formed UTF-8, decoded.
  bool String(std::string* out);
  // An object key with no escape: a view into the text.
  bool Key(std::string_view* out);
  // The literal null, consumed only if it is next.
  bool Null();
  bool Bool(bool* out);
  // An integer literal (no fraction or exponent) of at most 64 bits: what Json holds
  // as an unsigned (not negative) or a signed (negative) integer.
  bool Integer(bool* negative, uint64_t* magnitude);
  // Any value: its text, for Json's own parser (which checks it). `depth` is the
  // nesting level an object or array here would have; none may exceed max_depth.
  bool Value(int depth, std::string_view* text);
  // A value built without Json's parser, as that parser would build it: objects,
  // arrays, strings (no Unicode escape), integers, true, false and null. False on
  // anything else (a fraction or exponent, say): rewind and take Value instead.
  bool SimpleValue(int depth, Json* out);
  size_t position() const { return at_; }
  void Rewind(size_t position) { at_ = position; }

 private:
  void SkipSpace() {
    while (at_ < text_.size() &&
           (text_[at_] == ' ' || text_[at_] == '\n' || text_[at_] == '\r' || text_[at_] == '\t')) {
      ++at_;
    }
  }

  std::string_view text_;
  size_t at_ = 0;
  int max_depth_;
};

// Json::parse of `text` (a value TextReader::Value delimited); false where it throws.
bool ParseValue(std::string_view text, Json* out);

// The next value into *out, as Json's parser would give it: built directly where it
// is simple (most payloads' Json members are {} or a few strings and integers),
// else delimited and handed to the parser.
inline bool JsonValue(TextReader& r, int depth, Json* out) {
  const size_t start = r.position();
  if (r.SimpleValue(depth, out)) return true;
  r.Rewind(start);
  std::string_view text;
  return r.Value(depth, &text) && ParseValue(text, out);
}

template <class T>
bool DecodeStructText(TextReader& r, int depth, T* out);

// One member from the text: the same value DecodeValue would give from the parsed
// text, or false where DecodeValue would fail (or the text is one not taken).
template <class M>
bool DecodeValueText(TextReader& r, int depth, Shape shape, M* out) {
  if constexpr (std::is_same_v<M, Json>) {
    if (!JsonValue(r, depth, out)) return false;
    return (shape != Shape::kObject || out->is_object()) &&
           (shape != Shape::kArray || out->is_array());
  } else if constexpr (IsOptional<M>::value) {
    if (r.Null()) {
      out->reset();
      return true;
    }
    out->emplace();  // a fresh value, as DecodeValue decodes into
    return DecodeValueText(r, depth, shape, &**out);
  } else if constexpr (std::is_same_v<M, std::string>) {
    return r.String(out);
  } else if constexpr (std::is_same_v<M, bool>) {
    return r.Bool(out);
  } else if constexpr (std::is_integral_v<M>) {
    bool negative = false;
    uint64_t magnitude = 0;
    if (!r.Integer(&negative, &magnitude)) return false;
    if (!negative) {
      if (magnitude > static_cast<uint64_t>(std::numeric_limits<M>::max())) return false;
      *out = static_cast<M>(magnitude);
      return true;
    }
    if constexpr (std::is_unsigned_v<M>) {
      return magnitude == 0 ? (*out = 0, true) : false;  // -0 is 0
    } else {
      // |min| as unsigned, without overflowing.
      const uint64_t limit = static_cast<uint64_t>(-(std::numeric_limits<M>::min() + 1)) + 1;
      if (magnitude > limit) return false;
      *out = static_cast<M>(-static_cast<int64_t>(magnitude - 1) - 1);
      return true;
    }
  } else if constexpr (std::is_floating_point_v<M>) {
    Json j;
    std::string_view text;
    if (!r.Value(depth, &text) || !ParseValue(text, &j) || !j.is_number()) return false;
    *out = j.get<M>();
    return true;
  } else if constexpr (IsVector<M>::value) {
    if (depth > r.max_depth() || !r.Consume('[')) return false;
    out->clear();
    if (r.Consume(']')) return true;
    do {
      typename M::value_type x{};
      if (!DecodeValueText(r, depth + 1, Shape::kAny, &x)) return false;
      out->push_back(std::move(x));
    } while (r.Consume(','));
    return r.Consume(']');
  } else if constexpr (HasFields<M>) {
    return DecodeStructText(r, depth, out);
  } else {
    static_assert(sizeof(M) == 0, "fields: no decoding for this member type");
  }
}

template <class T>
bool DecodeStructText(TextReader& r, int depth, T* out) {
  constexpr size_t kCount = std::tuple_size_v<decltype(T::Fields())>;
  static_assert(kCount <= 64, "fields: DecodeText tracks at most 64 members");
  if (depth > r.max_depth() || !r.Consume('{')) return false;
  uint64_t seen = 0;
  if (!r.Consume('}')) {
    do {
      std::string_view key;
      if (!r.Key(&key) || !r.Consume(':')) return false;
      bool matched = false, ok = true;
      std::apply(
          [&](const auto&... f) {
            size_t i = 0;
            [[maybe_unused]] auto take = [&](const auto& field) {
              const uint64_t bit = uint64_t{1} << i++;
              if (matched || field.name != key) return;
              matched = true;
              // A key given twice: Json keeps the last; leave that to it.
              if ((seen & bit) != 0) {
                ok = false;
                return;
              }
              seen |= bit;
              ok = DecodeValueText(r, depth + 1, field.shape, &(out->*(field.member)));
            };
            (take(f), ...);
          },
          T::Fields());
      if (!ok) return false;
      if (!matched) {
        // A key the list does not name: ignored, but the text must still be JSON.
        Json ignored;
        if (!JsonValue(r, depth + 1, &ignored)) return false;
      }
    } while (r.Consume(','));
    if (!r.Consume('}')) return false;
  }
  // Members the text left out: an optional one is empty, any other is an error.
  bool complete = true;
  std::apply(
      [&](const auto&... f) {
        size_t i = 0;
        [[maybe_unused]] auto absent = [&](const auto& field) {
          const uint64_t bit = uint64_t{1} << i++;
          if ((seen & bit) != 0) return;
          auto& m = out->*(field.member);
          if constexpr (IsOptional<std::remove_cvref_t<decltype(m)>>::value) {
            m.reset();
          } else {
            complete = false;
          }
        };
        (absent(f), ...);
      },
      T::Fields());
  return complete;
}

// The number of members of aggregate T (what it can be brace-initialised with; a base
// class counts as one).
struct AnyMember {
  template <class M>
  operator M&() const&& noexcept;  // never defined: only counted in unevaluated code
};
template <class T, class... A>
constexpr size_t MemberCount() {
  if constexpr (requires { T{A{}..., AnyMember{}}; }) {
    return MemberCount<T, A..., AnyMember>();
  } else {
    return sizeof...(A);
  }
}

}  // namespace detail

// Whether T's field list names each of its data members (for a static_assert next to
// the list: a member added to the struct and not to the list must not compile).
template <HasFields T>
constexpr bool ListsEveryMember() {
  return detail::MemberCount<T>() == std::tuple_size_v<decltype(T::Fields())>;
}

// v as JSON: every member its list names (an empty optional is left out).
template <HasFields T>
Json Encode(const T& v) {
  return detail::EncodeStruct(v);
}

// j into *out; false with *error "path: problem" (e.g. "placements[1].rank: expected an
// integer, got string") when a member is missing or of the wrong type.
template <HasFields T>
bool Decode(const Json& j, T* out, std::string* error) {
  detail::Error e;
  if (detail::DecodeStruct(j, out, &e)) return true;
  *error = e.path.empty() ? e.problem : e.path + ": " + e.problem;
  return false;
}

// The JSON text `text` into *out, as Decode(ParseJson(text, max_depth)) would give it,
// building no Json document but the Json members'. False when the text is not one it
// takes: malformed, a member missing or of the wrong type, a key twice, a Unicode escape
// in a string, nesting deeper than max_depth. The caller then parses the text and
// decodes that, which names the problem (or, for what it does not take, decodes it).
// *out is then unspecified.
template <HasFields T>
bool DecodeText(std::string_view text, T* out, int max_depth = 64) {
  detail::TextReader r(text, max_depth);
  return detail::DecodeStructText(r, 1, out) && r.AtEnd();
}

}  // namespace epoch::fields
