#include "common/sse_parser.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace airlock {
namespace {

std::vector<SseEvent> ParseAll(const std::vector<std::string>& pieces) {
  std::vector<SseEvent> out;
  SseParser parser([&out](const SseEvent& e) {
    out.push_back(e);
    return true;
  });
  for (const auto& p : pieces) {
    auto r = parser.Feed(p);
    EXPECT_TRUE(r.has_value());
  }
  return out;
}

TEST(SseParser, ParsesIdEventAndData) {
  auto evs = ParseAll({"id: 3\nevent: session.state\ndata: {\"a\":1}\n\n"});
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].id, "3");
  EXPECT_EQ(evs[0].event, "session.state");
  EXPECT_EQ(evs[0].data, "{\"a\":1}");
}

TEST(SseParser, JoinsMultiLineDataWithNewlines) {
  auto evs = ParseAll({"data: one\ndata: two\ndata:three\n\n"});
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].data, "one\ntwo\nthree");
  EXPECT_EQ(evs[0].event, "message");
}

TEST(SseParser, IgnoresCommentsAndUnknownFields) {
  auto evs = ParseAll({": keep-alive\n\nretry: 100\nfoo: bar\ndata: x\n\n: another\n\n"});
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].data, "x");
}

TEST(SseParser, HandlesCrLfAndBareCr) {
  auto evs = ParseAll({"id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r\r"});
  ASSERT_EQ(evs.size(), 2u);
  EXPECT_EQ(evs[0].id, "1");
  EXPECT_EQ(evs[0].data, "a");
  EXPECT_EQ(evs[1].id, "2");
  EXPECT_EQ(evs[1].data, "b");
}

TEST(SseParser, CrLfSplitAcrossPiecesIsOneLineEnd) {
  // Were the LF taken as a second line end, the event would be dispatched early, without "b".
  auto evs = ParseAll({"data: a\r", "\ndata: b\r", "\n\r", "\n"});
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].data, "a\nb");
}

TEST(SseParser, SameEventsWhateverThePieceBoundaries) {
  std::string stream =
      ": airlock event stream\n\nid: 1\nevent: session.created\ndata: {\"seq\":1}\n\n"
      "id: 2\r\nevent: step\r\ndata: {\"seq\":2,\r\ndata: \"x\":true}\r\n\r\n";
  auto whole = ParseAll({stream});
  ASSERT_EQ(whole.size(), 2u);
  for (size_t size = 1; size < stream.size(); ++size) {
    std::vector<std::string> pieces;
    for (size_t i = 0; i < stream.size(); i += size) pieces.push_back(stream.substr(i, size));
    auto evs = ParseAll(pieces);
    ASSERT_EQ(evs.size(), 2u) << "piece size " << size;
    for (size_t i = 0; i < evs.size(); ++i) {
      EXPECT_EQ(evs[i].id, whole[i].id);
      EXPECT_EQ(evs[i].event, whole[i].event);
      EXPECT_EQ(evs[i].data, whole[i].data);
    }
  }
  EXPECT_EQ(whole[1].data, "{\"seq\":2,\n\"x\":true}");
}

TEST(SseParser, EventWithoutDataIsNotDispatchedAndTypeResets) {
  auto evs = ParseAll({"event: lonely\n\ndata: d\n\n"});
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].event, "message");
}

TEST(SseParser, IdPersistsUntilChanged) {
  auto evs = ParseAll({"id: 7\ndata: a\n\ndata: b\n\n"});
  ASSERT_EQ(evs.size(), 2u);
  EXPECT_EQ(evs[1].id, "7");
}

TEST(SseParser, DropsLeadingByteOrderMarkEvenWhenSplit) {
  auto evs = ParseAll({"\xEF", "\xBB",
                       "\xBF"
                       "data: x\n\n"});
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].data, "x");
}

TEST(SseParser, IncompleteEventIsNotDispatched) {
  auto evs = ParseAll({"data: half"});
  EXPECT_TRUE(evs.empty());
}

TEST(SseParser, StopsWhenTheCallbackSaysSo) {
  int calls = 0;
  SseParser parser([&calls](const SseEvent&) {
    ++calls;
    return false;
  });
  auto r = parser.Feed("data: 1\n\ndata: 2\n\n");
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(*r);
  EXPECT_EQ(calls, 1);
}

TEST(SseParser, RefusesOverlongLines) {
  SseParser parser([](const SseEvent&) { return true; }, 16);
  auto r = parser.Feed(std::string(40, 'x'));
  EXPECT_FALSE(r.has_value());
}

}  // namespace
}  // namespace airlock
