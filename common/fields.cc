#include "common/fields.h"

namespace epoch::fields::detail {

std::string_view KindName(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::object: return "object";
    case Json::value_t::array: return "array";
    case Json::value_t::string: return "string";
    case Json::value_t::boolean: return "boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return "integer";
    case Json::value_t::number_float: return "number";
    case Json::value_t::binary: return "binary";
    case Json::value_t::discarded: return "discarded";
  }
  return "?";
}

}  // namespace epoch::fields::detail

namespace epoch::fields::detail {

namespace {

// Consumes a string's text from its opening quote to its closing one (escapes
// skipped, not checked: Json's parser checks what it is handed).
bool SkipString(std::string_view text, size_t* at) {
  size_t i = *at + 1;
  while (i < text.size()) {
    if (text[i] == '\\') {
      i += 2;
    } else if (text[i] == '"') {
      *at = i + 1;
      return true;
    } else {
      ++i;
    }
  }
  return false;
}

}  // namespace

bool TextReader::String(std::string* out) {
  SkipSpace();
  if (at_ >= text_.size() || text_[at_] != '"') return false;
  out->clear();
  size_t run = ++at_;  // the bytes copied as they are, from here to at_
  while (at_ < text_.size()) {
    const auto c = static_cast<unsigned char>(text_[at_]);
    if (c == '"') {
      out->append(text_.data() + run, at_ - run);
      ++at_;
      return true;
    }
    if (c == '\\') {
      out->append(text_.data() + run, at_ - run);
      if (at_ + 1 >= text_.size()) return false;
      char decoded;
      switch (text_[at_ + 1]) {
        case '"': decoded = '"'; break;
        case '\\': decoded = '\\'; break;
        case '/': decoded = '/'; break;
        case 'b': decoded = '\b'; break;
        case 'f': decoded = '\f'; break;
        case 'n': decoded = '\n'; break;
        case 'r': decoded = '\r'; break;
        case 't': decoded = '\t'; break;
        default: return false;  // a Unicode escape (or a malformed one): Json's to decode
      }
      out->push_back(decoded);
      at_ += 2;
      run = at_;
      continue;
    }
    if (c < 0x20) return false;  // a control character must be escaped
    if (c < 0x80) {
      ++at_;
      continue;
    }
    const size_t len = Utf8SequenceLength(text_, at_);
    if (len == 0) return false;
    at_ += len;
  }
  return false;
}

bool TextReader::Key(std::string_view* out) {
  SkipSpace();
  if (at_ >= text_.size() || text_[at_] != '"') return false;
  const size_t start = ++at_;
  while (at_ < text_.size()) {
    const auto c = static_cast<unsigned char>(text_[at_]);
    if (c == '"') {
      *out = text_.substr(start, at_ - start);
      ++at_;
      return true;
    }
    if (c == '\\' || c < 0x20) return false;
    if (c < 0x80) {
      ++at_;
      continue;
    }
    const size_t len = Utf8SequenceLength(text_, at_);
    if (len == 0) return false;
    at_ += len;
  }
  return false;
}

bool TextReader::Null() {
  SkipSpace();
  if (text_.substr(at_, 4) != "null") return false;
  at_ += 4;
  return true;
}

bool TextReader::Bool(bool* out) {
  SkipSpace();
  if (text_.substr(at_, 4) == "true") {
    at_ += 4;
    *out = true;
    return true;
  }
  if (text_.substr(at_, 5) == "false") {
    at_ += 5;
    *out = false;
    return true;
  }
  return false;
}

bool TextReader::Integer(bool* negative, uint64_t* magnitude) {
  SkipSpace();
  size_t i = at_;
  *negative = i < text_.size() && text_[i] == '-';
  if (*negative) ++i;
  auto digit = [&](size_t k) { return k < text_.size() && text_[k] >= '0' && text_[k] <= '9'; };
  if (!digit(i)) return false;
  uint64_t v = 0;
  if (text_[i] == '0') {
    ++i;
    if (digit(i)) return false;  // a leading zero
  } else {
    while (digit(i)) {
      const auto d = static_cast<uint64_t>(text_[i] - '0');
      if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) return false;  // Json: a float
      v = v * 10 + d;
      ++i;
    }
  }
  // A fraction or an exponent makes it a float.
  if (i < text_.size() && (text_[i] == '.' || text_[i] == 'e' || text_[i] == 'E')) return false;
  *magnitude = v;
  at_ = i;
  return true;
}

bool TextReader::Value(int depth, std::string_view* out) {
  SkipSpace();
  const size_t start = at_;
  int open = 0;  // objects and arrays begun and not ended, from start
  while (at_ < text_.size()) {
    const char c = text_[at_];
    if (c == '"') {
      if (!SkipString(text_, &at_)) return false;
      if (open == 0) break;
    } else if (c == '{' || c == '[') {
      if (depth + open > max_depth_) return false;
      ++open;
      ++at_;
    } else if (c == '}' || c == ']') {
      if (open == 0) break;  // the end of the object or array this value is in
      ++at_;
      if (--open == 0) break;
    } else if (open == 0 && (c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t')) {
      break;
    } else {
      ++at_;
    }
  }
  if (open != 0 || at_ == start) return false;
  *out = text_.substr(start, at_ - start);
  return true;
}

bool TextReader::SimpleValue(int depth, Json* out) {
  SkipSpace();
  if (at_ >= text_.size()) return false;
  switch (text_[at_]) {
    case '{': {
      if (depth > max_depth_) return false;
      ++at_;
      *out = Json::object();
      if (Consume('}')) return true;
      do {
        std::string_view key;
        if (!Key(&key) || !Consume(':')) return false;
        // A key given twice: Json's parser keeps the last value, as this does.
        if (!SimpleValue(depth + 1, &(*out)[std::string(key)])) return false;
      } while (Consume(','));
      return Consume('}');
    }
    case '[': {
      if (depth > max_depth_) return false;
      ++at_;
      *out = Json::array();
      if (Consume(']')) return true;
      do {
        Json element;
        if (!SimpleValue(depth + 1, &element)) return false;
        out->push_back(std::move(element));
      } while (Consume(','));
      return Consume(']');
    }
    case '"': {
      std::string s;
      if (!String(&s)) return false;
      *out = std::move(s);
      return true;
    }
    case 't':
    case 'f': {
      bool b = false;
      if (!Bool(&b)) return false;
      *out = b;
      return true;
    }
    case 'n':
      if (!Null()) return false;
      *out = nullptr;
      return true;
    default: {
      // Json's parser holds a non-negative integer as unsigned, a negative one
      // (-0 included) as signed; one of more than 64 bits is a float: not taken.
      bool negative = false;
      uint64_t magnitude = 0;
      if (!Integer(&negative, &magnitude)) return false;
      if (!negative) {
        *out = magnitude;
      } else if (magnitude <= uint64_t{1} << 63) {
        *out = magnitude == 0 ? int64_t{0} : -static_cast<int64_t>(magnitude - 1) - 1;
      } else {
        return false;
      }
      return true;
    }
  }
}

bool ParseValue(std::string_view text, Json* out) {
  // Json skips a byte order mark at the start of its input; inside a document it
  // is an error.
  if (text.starts_with("\xEF\xBB\xBF")) return false;
  *out = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  return !out->is_discarded();
}

}  // namespace epoch::fields::detail
