// Internal to engine/snapshot.cc: the snapshot format's primitives (Writer and
// Reader: varints, zig-zag, the string table, times relative to the previous one,
// tagged JSON) and the field-list codec that writes and reads a struct from one list
// of its members (SnapList<T>, specialised in snapshot.cc for each struct it covers).
// Not an interface for anything else.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/fields.h"
#include "common/json.h"
#include "common/status.h"
#include "workflows/definition.h"

namespace epoch::engine::snapshot_internal {

// JSON nested deeper than this is refused when decoding (the API accepts 64 levels).
constexpr int kMaxJsonDepth = 512;
// Longer strings are written inline: long ones rarely repeat, and the table
// should hold names, not payloads.
constexpr size_t kMaxSymbolBytes = 96;
// JSON string values go through the table only when short (GPU indices, states).
constexpr size_t kMaxJsonSymbolBytes = 16;
enum JsonTag : uint8_t {
  kNull = 0,
  kFalse,
  kTrue,
  kInteger,
  kUnsigned,
  kFloat,
  kString,
  kArray,
  kObject,
  kBinary,
};

inline uint64_t ZigZag(int64_t v) {
  return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
}
inline int64_t UnZigZag(uint64_t u) { return static_cast<int64_t>((u >> 1) ^ (~(u & 1) + 1)); }

inline uint32_t Load32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}
inline uint64_t Load64(const unsigned char* p) {
  return static_cast<uint64_t>(Load32(p)) | static_cast<uint64_t>(Load32(p + 4)) << 32;
}

using DefPtr = std::shared_ptr<const workflows::Definition>;

// ---------------------------------------------------------------------------
// Encoding

// Every distinct definition once, written ahead of what refers to it by its 1-based
// index (0: none): by pointer, else by digest (an equal digest is an equal source, and
// definitions are immutable, so sharing one is safe).
class DefTable {
 public:
  void Add(const DefPtr& def) { (void)Ref(def); }
  uint64_t Ref(const DefPtr& def) {
    if (!def) return 0;
    if (auto it = by_ptr_.find(def.get()); it != by_ptr_.end()) return it->second;
    uint64_t ref = 0;
    if (!def->digest.empty()) {
      if (auto it = by_digest_.find(def->digest); it != by_digest_.end()) ref = it->second;
    }
    if (ref == 0) {
      defs_.push_back(def.get());
      ref = defs_.size();
      if (!def->digest.empty()) by_digest_.emplace(def->digest, ref);
    }
    by_ptr_.emplace(def.get(), ref);
    return ref;
  }
  const std::vector<const workflows::Definition*>& defs() const { return defs_; }

 private:
  std::vector<const workflows::Definition*> defs_;
  std::unordered_map<const workflows::Definition*, uint64_t> by_ptr_;
  std::unordered_map<std::string_view, uint64_t> by_digest_;
};

class Writer {
 public:
  // Definitions are referred to through `defs`, which outlives the writer.
  explicit Writer(DefTable& defs) : defs_(&defs) {}
  std::string& out() { return out_; }
  DefTable& defs() { return *defs_; }

  // A writer for one chunk of runs: it starts from this one's string table (what
  // the chunk adds stays its own) and from time 0, so chunks decode independently.
  Writer ForChunk() const {
    Writer w(*defs_);
    w.symbols_ = symbols_;
    return w;
  }

  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void Varint(uint64_t v) {
    char buf[10];
    size_t n = 0;
    while (v >= 0x80) {
      buf[n++] = static_cast<char>(v | 0x80);
      v >>= 7;
    }
    buf[n++] = static_cast<char>(v);
    out_.append(buf, n);
  }
  void Svarint(int64_t v) { Varint(ZigZag(v)); }
  void Fixed32(uint32_t v) {
    char buf[4];
    for (int i = 0; i < 4; ++i) buf[i] = static_cast<char>(v >> (8 * i));
    out_.append(buf, 4);
  }
  void Fixed64(uint64_t v) {
    char buf[8];
    for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>(v >> (8 * i));
    out_.append(buf, 8);
  }

  // A string written inline (ids, payloads).
  void Str(std::string_view s) {
    Varint(static_cast<uint64_t>(s.size()) << 2);
    out_.append(s);
  }
  // A string likely to repeat: the first time inline (and into the table), later
  // as its table index. The views stay valid: they point into the State encoded.
  void Sym(std::string_view s) {
    if (s.empty() || s.size() > kMaxSymbolBytes) return Str(s);
    auto [it, inserted] = symbols_.try_emplace(s, static_cast<uint32_t>(symbols_.size()));
    if (!inserted) return Varint(static_cast<uint64_t>(it->second) << 2 | 2);
    Varint(static_cast<uint64_t>(s.size()) << 2 | 1);
    out_.append(s);
  }

  void Time(TimePoint t) {
    if (t == TimePoint{}) return Varint(1);
    int64_t us = ToMicros(t);
    // Wrapping difference: the decoder adds it back the same way.
    auto d = static_cast<int64_t>(static_cast<uint64_t>(us) - static_cast<uint64_t>(time_base_));
    constexpr int64_t kLimit = int64_t{1} << 61;
    if (d >= -kLimit && d < kLimit) {
      Varint(ZigZag(d) << 1);
    } else {
      Varint(5);
      Svarint(us);
    }
    time_base_ = us;
  }
  void OptTime(const std::optional<TimePoint>& t) {
    if (!t) return Varint(3);
    Time(*t);
  }
  void OptInt(const std::optional<int>& v) { Varint(v ? ZigZag(*v) + 1 : 0); }

  void Json(const epoch::Json& j) {
    using V = epoch::Json::value_t;
    switch (j.type()) {
      case V::null:
      case V::discarded:  // never held in a State; kept as null
        return U8(kNull);
      case V::boolean: return U8(*j.get_ptr<const epoch::Json::boolean_t*>() ? kTrue : kFalse);
      case V::number_integer:
        U8(kInteger);
        return Svarint(*j.get_ptr<const epoch::Json::number_integer_t*>());
      case V::number_unsigned:
        U8(kUnsigned);
        return Varint(*j.get_ptr<const epoch::Json::number_unsigned_t*>());
      case V::number_float:
        U8(kFloat);
        return Fixed64(std::bit_cast<uint64_t>(*j.get_ptr<const epoch::Json::number_float_t*>()));
      case V::string: {
        U8(kString);
        const auto& s = *j.get_ptr<const epoch::Json::string_t*>();
        return s.size() <= kMaxJsonSymbolBytes ? Sym(s) : Str(s);
      }
      case V::array: {
        const auto& a = *j.get_ptr<const epoch::Json::array_t*>();
        U8(kArray);
        Varint(a.size());
        for (const auto& e : a) Json(e);
        return;
      }
      case V::object: {
        const auto& o = *j.get_ptr<const epoch::Json::object_t*>();
        U8(kObject);
        Varint(o.size());
        for (const auto& [k, v] : o) {
          Sym(k);
          Json(v);
        }
        return;
      }
      case V::binary: {
        const auto& b = j.get_binary();
        U8(kBinary);
        Varint(b.size());
        out_.append(reinterpret_cast<const char*>(b.data()), b.size());
        U8(b.has_subtype() ? 1 : 0);
        return Varint(b.has_subtype() ? b.subtype() : 0);
      }
    }
  }

 private:
  DefTable* defs_;
  std::string out_;
  std::unordered_map<std::string_view, uint32_t> symbols_;
  int64_t time_base_ = 0;
};

// ---------------------------------------------------------------------------
// Field lists. Every struct in a snapshot, State included, is written and read by
// one list (SnapList<T>): the list's order is the format's, and WriteFields and
// ReadFields both walk it, so there is no writer and reader to keep in step. Each
// entry is a member and how it is stored where its type does not say: strings
// through the string table (Sym) or inline (Str, the default), an enum with its
// largest value. A part of State that is more than a walk of its value (the runs,
// in chunks that decode in parallel) is an entry with a codec of its own (Custom);
// bytes that belong to no member (the definitions table) are a Section between
// entries. A static_assert counts each struct's members against its list, so a
// member added to the struct and not to the list does not compile.

// Bit i says whether the i-th string of one element (a map entry's key, then its
// value; a pair's first, then its second) goes through the string table.
constexpr uint32_t kAllSym = ~0u;

class Reader;

template <class T, class M>
struct SnapField {
  M T::*member;
  const char* name;
  uint32_t sym = 0;
  int max = 0;  // enums: the largest value
};
template <class T, class M>
struct SnapCustom {  // a member with a codec of its own
  M T::*member;
  const char* name;
  void (*write)(Writer&, const T&);
  void (*read)(Reader&, T&);
};
template <class T>
struct SnapSection {  // bytes of no member
  const char* name;
  void (*write)(Writer&, const T&);
  void (*read)(Reader&, T&);
};

template <class T, class M>
constexpr SnapField<T, M> Plain(M T::*m, const char* name) {
  return {m, name};
}
template <class T, class M>
constexpr SnapField<T, M> Sym(M T::*m, const char* name) {
  return {m, name, kAllSym};
}
// Strings by position in each element: e.g. 0b101 for (Sym, Str), (Sym, int).
template <class T, class M>
constexpr SnapField<T, M> Syms(M T::*m, uint32_t sym, const char* name) {
  return {m, name, sym};
}
template <class T, class E>
constexpr SnapField<T, E> Enum(E T::*m, E max, const char* name) {
  return {m, name, 0, static_cast<int>(max)};
}
template <class T, class M>
constexpr SnapCustom<T, M> Custom(M T::*m, const char* name, void (*write)(Writer&, const T&),
                                  void (*read)(Reader&, T&)) {
  return {m, name, write, read};
}
template <class T>
constexpr SnapSection<T> Section(const char* name, void (*write)(Writer&, const T&),
                                 void (*read)(Reader&, T&)) {
  return {name, write, read};
}

// SnapList<T>::Fields() is the list; kKey (optional) a member that is the struct's
// key in the map holding it, written as the key and set from it when read;
// kOutside (optional) how many other members are written elsewhere, and where is
// said beside it.
template <class T>
struct SnapList;

using fields::detail::MemberCount;
template <class E>
constexpr bool kIsSection = false;
template <class T>
constexpr bool kIsSection<SnapSection<T>> = true;
template <class T>
constexpr bool ListsEveryMember() {
  size_t listed = std::apply(
      [](const auto&... f) {
        return (size_t{0} + ... + (kIsSection<std::decay_t<decltype(f)>> ? 0 : 1));
      },
      SnapList<T>::Fields());
  if constexpr (requires { SnapList<T>::kKey; }) ++listed;
  if constexpr (requires { SnapList<T>::kOutside; }) listed += SnapList<T>::kOutside;
  return MemberCount<T>() == listed;
}
using fields::detail::IsVector;
template <class T>
concept Listed = requires {
  SnapList<T>::Fields();
};
template <class T>
struct IsPair : std::false_type {};
template <class A, class B>
struct IsPair<std::pair<A, B>> : std::true_type {};
template <class T>
struct IsSet : std::false_type {};
template <class K>
struct IsSet<std::set<K>> : std::true_type {};
template <class T>
struct IsMap : std::false_type {};
template <class K, class V>
struct IsMap<std::map<K, V>> : std::true_type {};

template <class T>
void WriteFields(Writer& w, const T& v);

template <class M>
void WriteValue(Writer& w, const M& v, uint32_t sym, uint32_t& nth) {
  if constexpr (std::is_same_v<M, std::string>) {
    bool table = nth < 32 && ((sym >> nth) & 1);
    ++nth;
    table ? w.Sym(v) : w.Str(v);
  } else if constexpr (std::is_enum_v<M>) {
    w.U8(static_cast<uint8_t>(v));
  } else if constexpr (std::is_same_v<M, bool>) {
    w.U8(v ? 1 : 0);
  } else if constexpr (std::is_same_v<M, double>) {
    w.Fixed64(std::bit_cast<uint64_t>(v));
  } else if constexpr (std::is_same_v<M, uint64_t>) {
    w.Varint(v);
  } else if constexpr (std::is_integral_v<M>) {
    w.Svarint(v);
  } else if constexpr (std::is_same_v<M, TimePoint>) {
    w.Time(v);
  } else if constexpr (std::is_same_v<M, std::optional<TimePoint>>) {
    w.OptTime(v);
  } else if constexpr (std::is_same_v<M, std::optional<int>>) {
    w.OptInt(v);
  } else if constexpr (std::is_same_v<M, epoch::Json>) {
    w.Json(v);
  } else if constexpr (std::is_same_v<M, DefPtr>) {
    w.Varint(w.defs().Ref(v));
  } else if constexpr (IsPair<M>::value) {
    WriteValue(w, v.first, sym, nth);
    WriteValue(w, v.second, sym, nth);
  } else if constexpr (IsSet<M>::value || IsVector<M>::value) {
    w.Varint(v.size());
    for (const auto& x : v) {
      uint32_t first = 0;
      WriteValue(w, x, sym, first);
    }
  } else if constexpr (IsMap<M>::value) {
    w.Varint(v.size());
    for (const auto& [key, value] : v) {
      uint32_t first = 0;
      WriteValue(w, key, sym, first);
      WriteValue(w, value, sym, first);
    }
  } else if constexpr (Listed<M>) {
    WriteFields(w, v);
  } else {
    static_assert(sizeof(M) == 0, "snapshot: no encoding for this member type");
  }
}

template <class T, class M>
void WriteEntry(Writer& w, const T& v, const SnapField<T, M>& f) {
  uint32_t first = 0;
  WriteValue(w, v.*(f.member), f.sym, first);
}
template <class T, class M>
void WriteEntry(Writer& w, const T& v, const SnapCustom<T, M>& f) {
  f.write(w, v);
}
template <class T>
void WriteEntry(Writer& w, const T& v, const SnapSection<T>& f) {
  f.write(w, v);
}

template <class T>
void WriteFields(Writer& w, const T& v) {
  std::apply([&](const auto&... f) { (WriteEntry(w, v, f), ...); }, SnapList<T>::Fields());
}

// ---------------------------------------------------------------------------
// Decoding. After the first error every read returns a zero value and consumes
// nothing, so loops end at once; the caller checks ok() and reports error().

class Reader {
 public:
  // Definitions are resolved against `defs` (filled by the definitions section
  // before anything refers to one), which outlives the reader.
  Reader(std::string_view body, std::vector<DefPtr>& defs)
      : body_(body),
        begin_(reinterpret_cast<const unsigned char*>(body.data())),
        p_(begin_),
        end_(begin_ + body.size()),
        defs_(&defs) {}
  // Reads body[from, to) of `parent`'s body with its string table and definitions so
  // far (offsets in errors stay relative to the whole body).
  Reader(const Reader& parent, size_t from, size_t to)
      : body_(parent.body_),
        begin_(parent.begin_),
        p_(begin_ + from),
        end_(begin_ + to),
        symbols_(parent.symbols_),
        defs_(parent.defs_) {}

  bool ok() const { return error_.empty(); }
  size_t offset() const { return static_cast<size_t>(p_ - begin_); }
  const std::string& error() const { return error_; }
  std::vector<DefPtr>& defs() { return *defs_; }
  // kCorruption with error(), or what FailWith was given.
  Status status() const {
    if (ok()) return Status::Ok();
    return failure_ ? *failure_ : Corruption(error_);
  }
  size_t remaining() const { return static_cast<size_t>(end_ - p_); }
  void set_where(std::string_view where) { where_ = where; }

  void Fail(std::string_view what) {
    if (!ok()) return;
    error_ = "snapshot corrupt at body byte " + std::to_string(p_ - begin_);
    if (!where_.empty()) error_ += " (" + std::string(where_) + ")";
    error_ += ": ";
    error_ += what;
    p_ = end_;
  }

  // A failure that is not damage (out of memory): decoding stops with `st`.
  void FailWith(Status st) {
    if (!ok()) return;
    error_ = st.ToString();
    failure_ = std::move(st);
    p_ = end_;
  }

  DefPtr Def() {
    uint64_t v = Varint();
    if (v > defs_->size()) {
      Fail("definition " + std::to_string(v) + " of " + std::to_string(defs_->size()));
      return nullptr;
    }
    return v == 0 ? nullptr : (*defs_)[static_cast<size_t>(v - 1)];
  }

  uint8_t U8() {
    if (p_ == end_) {
      Fail("truncated");
      return 0;
    }
    return *p_++;
  }
  uint64_t Varint() {
    if (p_ != end_ && *p_ < 0x80) return *p_++;
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ == end_) {
        Fail("truncated varint");
        return 0;
      }
      uint8_t b = *p_++;
      if (shift == 63 && b > 1) {
        Fail("varint overflows 64 bits");
        return 0;
      }
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    Fail("varint longer than 10 bytes");  // not reached: shift 63 ends the loop
    return 0;
  }
  int64_t Svarint() { return UnZigZag(Varint()); }
  int Int(const char* what) {
    int64_t v = Svarint();
    if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) {
      Fail(std::string(what) + " out of range");
      return 0;
    }
    return static_cast<int>(v);
  }
  // Skips n bytes (n <= remaining(), as Count checks).
  void Skip(size_t n) { p_ += std::min(n, remaining()); }
  uint64_t Fixed64() {
    if (remaining() < 8) {
      Fail("truncated");
      return 0;
    }
    uint64_t v = Load64(p_);
    p_ += 8;
    return v;
  }
  bool Bool(const char* what) {
    uint8_t v = U8();
    if (v > 1) Fail(std::string(what) + " is not 0 or 1");
    return v == 1;
  }
  template <typename E>
  E Enum(E max, const char* what) {
    uint8_t v = U8();
    if (v > static_cast<uint8_t>(max)) {
      Fail(std::string("unknown ") + what + " " + std::to_string(v));
      return E{};
    }
    return static_cast<E>(v);
  }
  // An element count; each element takes at least one byte, so a count larger
  // than what is left is corrupt (and never allocates).
  size_t Count(const char* what) {
    uint64_t n = Varint();
    if (n > remaining()) {
      Fail(std::string(what) + " count " + std::to_string(n) + " exceeds the bytes left");
      return 0;
    }
    return static_cast<size_t>(n);
  }

  // A view into the input (which outlives the decode) or into the table (ditto).
  std::string_view Str() {
    uint64_t v = Varint();
    uint64_t x = v >> 2;
    switch (v & 3) {
      case 0:
      case 1: {
        if (x > remaining()) {
          Fail("string of " + std::to_string(x) + " bytes runs past the end");
          return {};
        }
        std::string_view s(reinterpret_cast<const char*>(p_), static_cast<size_t>(x));
        p_ += x;
        if (v & 1) symbols_.push_back(s);
        return s;
      }
      case 2:
        if (x >= symbols_.size()) {
          Fail("string table index " + std::to_string(x) + " of " +
               std::to_string(symbols_.size()));
          return {};
        }
        return symbols_[static_cast<size_t>(x)];
      default: Fail("bad string tag"); return {};
    }
  }
  void Str(std::string& out) { out.assign(Str()); }

  TimePoint Time() {
    bool null = false;
    TimePoint t = TimeImpl(false, &null);
    return t;
  }
  std::optional<TimePoint> OptTime() {
    bool null = false;
    TimePoint t = TimeImpl(true, &null);
    if (null) return std::nullopt;
    return t;
  }
  std::optional<int> OptInt(const char* what) {
    uint64_t v = Varint();
    if (v == 0) return std::nullopt;
    int64_t x = UnZigZag(v - 1);
    if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max()) {
      Fail(std::string(what) + " out of range");
      return std::nullopt;
    }
    return static_cast<int>(x);
  }

  // Reads into `out`, reusing its storage when it already has the right type
  // (default-constructed State members start as empty arrays and objects).
  void Json(epoch::Json& out, int depth = 0) {
    uint8_t tag = U8();
    if (!ok()) return;
    switch (tag) {
      case kNull: out = nullptr; return;
      case kFalse:
      case kTrue: out = tag == kTrue; return;
      case kInteger: out = static_cast<epoch::Json::number_integer_t>(Svarint()); return;
      case kUnsigned: out = static_cast<epoch::Json::number_unsigned_t>(Varint()); return;
      case kFloat: out = std::bit_cast<double>(Fixed64()); return;
      case kString: {
        std::string_view s = Str();
        if (auto* str = out.get_ptr<epoch::Json::string_t*>()) {
          str->assign(s);
        } else {
          out = std::string(s);
        }
        return;
      }
      case kArray: {
        size_t n = Count("array");
        if (depth >= kMaxJsonDepth) return Fail("JSON nested too deeply");
        if (!out.is_array()) out = epoch::Json::array();
        auto& a = *out.get_ptr<epoch::Json::array_t*>();
        a.clear();
        a.reserve(n);
        for (size_t i = 0; i < n && ok(); ++i) Json(a.emplace_back(), depth + 1);
        return;
      }
      case kObject: {
        size_t n = Count("object");
        if (depth >= kMaxJsonDepth) return Fail("JSON nested too deeply");
        if (!out.is_object()) out = epoch::Json::object();
        auto& o = *out.get_ptr<epoch::Json::object_t*>();
        o.clear();
        for (size_t i = 0; i < n && ok(); ++i) {
          std::string_view key = Str();
          if (!o.empty() && !(o.rbegin()->first < key)) return Fail("JSON keys out of order");
          auto it = o.emplace_hint(o.end(), std::piecewise_construct, std::forward_as_tuple(key),
                                   std::forward_as_tuple());
          Json(it->second, depth + 1);
        }
        return;
      }
      case kBinary: {
        size_t n = Count("binary");
        std::vector<uint8_t> bytes(p_, p_ + n);
        p_ += n;
        bool has_subtype = Bool("binary subtype flag");
        uint64_t subtype = Varint();
        out = has_subtype ? epoch::Json::binary(std::move(bytes), subtype)
                          : epoch::Json::binary(std::move(bytes));
        return;
      }
      default: Fail("unknown JSON tag " + std::to_string(tag));
    }
  }

 private:
  TimePoint TimeImpl(bool optional, bool* null) {
    uint64_t v = Varint();
    if ((v & 1) == 0) {
      time_base_ = static_cast<int64_t>(static_cast<uint64_t>(time_base_) +
                                        static_cast<uint64_t>(UnZigZag(v >> 1)));
      return FromMicros(time_base_);
    }
    switch (v >> 1) {
      case 0: return TimePoint{};
      case 1:
        if (!optional) Fail("missing time");
        *null = true;
        return TimePoint{};
      case 2: time_base_ = Svarint(); return FromMicros(time_base_);
      default: Fail("bad time tag"); return TimePoint{};
    }
  }

  std::string_view body_;
  const unsigned char* begin_;
  const unsigned char* p_;
  const unsigned char* end_;
  std::vector<std::string_view> symbols_;
  std::vector<DefPtr>* defs_;
  int64_t time_base_ = 0;
  std::string_view where_;
  std::string error_;
  std::optional<Status> failure_;
};

// Appends to a sorted container, refusing keys that are not strictly increasing
// (a valid snapshot writes them in order, so this also keeps duplicates out).
template <typename C, typename K, typename... V>
typename C::iterator AppendSorted(Reader& r, C& c, K&& key, const char* what, V&&... value) {
  if (!c.empty()) {
    auto last = std::prev(c.end());
    if constexpr (requires { typename C::mapped_type; }) {
      if (!(last->first < key)) r.Fail(std::string(what) + " out of order");
    } else {
      if (!(*last < key)) r.Fail(std::string(what) + " out of order");
    }
  }
  if (!r.ok()) return c.end();
  if constexpr (sizeof...(V) == 0) {
    if constexpr (requires { typename C::mapped_type; }) {
      return c.emplace_hint(c.end(), std::piecewise_construct,
                            std::forward_as_tuple(std::forward<K>(key)), std::forward_as_tuple());
    } else {
      return c.emplace_hint(c.end(), std::forward<K>(key));
    }
  } else {
    return c.emplace_hint(c.end(), std::forward<K>(key), std::forward<V>(value)...);
  }
}

template <class T>
void ReadFields(Reader& r, T& out);

// `name` and `max` are the entry's (for errors, and an enum's range).
template <class M>
void ReadValue(Reader& r, M& out, const char* name, int max) {
  if constexpr (std::is_same_v<M, std::string>) {
    r.Str(out);
  } else if constexpr (std::is_enum_v<M>) {
    out = r.Enum(static_cast<M>(max), name);
  } else if constexpr (std::is_same_v<M, bool>) {
    out = r.Bool(name);
  } else if constexpr (std::is_same_v<M, double>) {
    out = std::bit_cast<double>(r.Fixed64());
  } else if constexpr (std::is_same_v<M, uint64_t>) {
    out = r.Varint();
  } else if constexpr (std::is_same_v<M, int>) {
    out = r.Int(name);
  } else if constexpr (std::is_same_v<M, int64_t>) {
    out = r.Svarint();
  } else if constexpr (std::is_same_v<M, TimePoint>) {
    out = r.Time();
  } else if constexpr (std::is_same_v<M, std::optional<TimePoint>>) {
    out = r.OptTime();
  } else if constexpr (std::is_same_v<M, std::optional<int>>) {
    out = r.OptInt(name);
  } else if constexpr (std::is_same_v<M, epoch::Json>) {
    r.Json(out);
  } else if constexpr (std::is_same_v<M, DefPtr>) {
    out = r.Def();
  } else if constexpr (IsPair<M>::value) {
    ReadValue(r, out.first, name, max);
    ReadValue(r, out.second, name, max);
  } else if constexpr (IsSet<M>::value) {
    size_t n = r.Count(name);
    for (size_t i = 0; i < n && r.ok(); ++i) {
      typename M::value_type key{};
      ReadValue(r, key, name, max);
      AppendSorted(r, out, std::move(key), name);
    }
  } else if constexpr (IsMap<M>::value) {
    size_t n = r.Count(name);
    for (size_t i = 0; i < n && r.ok(); ++i) {
      typename M::key_type key{};
      ReadValue(r, key, name, max);
      auto it = AppendSorted(r, out, std::move(key), name);
      if (it == out.end()) return;
      ReadValue(r, it->second, name, max);
      using V = typename M::mapped_type;
      if constexpr (requires { SnapList<V>::kKey; }) it->second.*(SnapList<V>::kKey) = it->first;
    }
  } else if constexpr (IsVector<M>::value) {
    size_t n = r.Count(name);
    out.resize(n);
    for (auto& x : out) {
      if (!r.ok()) return;
      ReadValue(r, x, name, max);
    }
  } else if constexpr (Listed<M>) {
    ReadFields(r, out);
  } else {
    static_assert(sizeof(M) == 0, "snapshot: no decoding for this member type");
  }
}

// A list that names its sections (State's) says which one an error is in.
template <class T>
void ReadWhere(Reader& r, const char* name) {
  if constexpr (requires { SnapList<T>::kNamesSections; }) r.set_where(name);
}
template <class T, class M>
void ReadEntry(Reader& r, T& v, const SnapField<T, M>& f) {
  ReadWhere<T>(r, f.name);
  ReadValue(r, v.*(f.member), f.name, f.max);
}
template <class T, class M>
void ReadEntry(Reader& r, T& v, const SnapCustom<T, M>& f) {
  ReadWhere<T>(r, f.name);
  f.read(r, v);
}
template <class T>
void ReadEntry(Reader& r, T& v, const SnapSection<T>& f) {
  ReadWhere<T>(r, f.name);
  f.read(r, v);
}

template <class T>
void ReadFields(Reader& r, T& out) {
  std::apply([&](const auto&... f) { (ReadEntry(r, out, f), ...); }, SnapList<T>::Fields());
}

}  // namespace epoch::engine::snapshot_internal
