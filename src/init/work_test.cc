// airlock-init's reading of the session's variables and files (work.h): the JSON the control
// plane answers, read strictly, and the environment the agent gets.
#include "work.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace airlock::init {
namespace {

TEST(WorkTest, ReadsTheSessionsVariablesWithEveryEscape) {
  auto vars = ParseStringMap(
      R"({"env": {"A": "plain", "B": "line\nbreak \"q\" \\ \/ \t", "C": "\u00e9\u20ac\ud83d\ude00",
                  "D": ""}})",
      "env");
  ASSERT_TRUE(vars) << vars.error();
  ASSERT_EQ(vars->size(), 4u);
  EXPECT_EQ((*vars)[0], (std::pair<std::string, std::string>{"A", "plain"}));
  EXPECT_EQ((*vars)[1].second, "line\nbreak \"q\" \\ / \t");
  EXPECT_EQ((*vars)[2].second, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
  EXPECT_EQ((*vars)[3].second, "");
  // Other members are skipped, whatever they hold.
  auto other =
      ParseStringMap(R"({"x": [1, {"y": null}, true], "env": {"K": "v"}, "z": -1.5e3})", "env");
  ASSERT_TRUE(other) << other.error();
  ASSERT_EQ(other->size(), 1u);
  EXPECT_EQ((*other)[0].first, "K");
  auto none = ParseStringMap(R"({"env": {}})", "env");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

TEST(WorkTest, RefusesWhatIsNotTheControlPlanesAnswer) {
  for (const char* bad : {
           "",                               // nothing
           "pong /sandbox/v1/env",           // not JSON
           R"({"env": {"A": 1}})",           // a value that is not a string
           R"({"env": {"A": "x")",           // unterminated
           R"({"env": {"A": "\ud83d"}})",    // a lone surrogate
           R"({"env": {"A": "\q"}})",        // an unknown escape
           "{\"env\": {\"A\": \"a\x01\"}}",  // a raw control character
           R"({"env": {}} trailing)",        // text after the object
       }) {
    EXPECT_FALSE(ParseStringMap(bad, "env")) << bad;
  }
  std::string deep = "{\"x\": " + std::string(100, '[') + std::string(100, ']') + "}";
  EXPECT_FALSE(ParseStringMap(deep, "env"));
}

TEST(WorkTest, ReadsTheNamesOfTheSessionsFiles) {
  auto names = ParseFileNames(
      R"({"files": [{"name": "notes.md", "size": 6, "created_at": "2026-12-04T07:00:00.000Z"},
                    {"size": 1, "name": "d\u00e9j\u00e0 \"vu\".txt"}]})");
  ASSERT_TRUE(names) << names.error();
  EXPECT_EQ(*names, (std::vector<std::string>{"notes.md", "d\xc3\xa9j\xc3\xa0 \"vu\".txt"}));
  auto empty = ParseFileNames(R"({"files": []})");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
  EXPECT_FALSE(ParseFileNames(R"({"files": [{"size": 1}]})"));  // no name
  EXPECT_FALSE(ParseFileNames(R"({"files": {"name": "x"}})"));  // not an array
}

TEST(WorkTest, ReadsTheWorkAnswerWhole) {
  auto work = ParseWork(
      R"({"env": {"REPO": "airlock"}, "files": [{"name": "a.txt", "size": 1, "created_at": "x"}]})");
  ASSERT_TRUE(work) << work.error();
  ASSERT_EQ(work->env.size(), 1u);
  EXPECT_EQ(work->env[0].second, "airlock");
  EXPECT_EQ(work->files, std::vector<std::string>{"a.txt"});
  EXPECT_FALSE(ParseWork(R"({"env": {"A": 1}, "files": []})"));
}

TEST(WorkTest, ReadsTheEgressCaWhenTheSessionHasASecret) {
  auto work = ParseWork(
      R"({"env": {"GH": "airlock-secret-gh"}, "files": [], "egress": true,
          "ca": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"})");
  ASSERT_TRUE(work) << work.error();
  EXPECT_TRUE(work->egress);
  EXPECT_EQ(work->ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
  auto none = ParseWork(R"({"env": {}, "files": [], "ca": null})");
  ASSERT_TRUE(none) << none.error();
  EXPECT_EQ(none->ca, "");
  EXPECT_FALSE(ParseWork(R"({"env": {}, "files": [], "ca": 1})"));
}

TEST(WorkTest, TheCaBundleIsTheImagesTrustStoreAndTheCaReadableNotWritableByOthers) {
  char tmpl[] = "/tmp/airlock-work-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = std::string(tmpl) + "/run";
  const std::string ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  auto path = WriteCaBundle(ca, dir);
  ASSERT_TRUE(path) << path.error();
  EXPECT_EQ(*path, dir + "/ca-bundle.pem");
  struct stat st {};
  ASSERT_EQ(::stat(path->c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  std::string text;
  {
    char buf[4096];
    int fd = ::open(path->c_str(), O_RDONLY | O_CLOEXEC);
    for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;)
      text.append(buf, static_cast<size_t>(n));
    ::close(fd);
  }
  EXPECT_TRUE(text.ends_with(ca)) << "the CA comes last, after the image's own";
  if (::access("/etc/ssl/certs/ca-certificates.crt", R_OK) == 0) {
    EXPECT_GT(text.size(), ca.size() * 10) << "the host's trust store comes first";
  }
  ::unlink(path->c_str());
  ::rmdir(dir.c_str());
  ::rmdir(tmpl);
}

TEST(WorkTest, TheSessionsVariablesGoOverTheImagesAndTheThreeOverAll) {
  auto env = MergeEnvironment({"PATH=/bin", "HOME=/home/sandbox", "LANG=C.UTF-8"},
                              {"PATH=/opt/app/bin:/bin", "APP_MODE=image", "SESSION_TOKEN=stale"},
                              {{"APP_MODE", "session"}, {"EXTRA", "1"}},
                              {"SESSION_ID=s", "SESSION_TOKEN=t", "CONTROL_PLANE_URL=u"});
  EXPECT_EQ(env, (std::vector<std::string>{"SESSION_ID=s", "SESSION_TOKEN=t", "CONTROL_PLANE_URL=u",
                                           "PATH=/opt/app/bin:/bin", "HOME=/home/sandbox",
                                           "LANG=C.UTF-8", "APP_MODE=session", "EXTRA=1"}));
}

}  // namespace
}  // namespace airlock::init
