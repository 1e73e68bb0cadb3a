package api

import "testing"

// TestReviewObsLogFormatStartTimeWithStrftime: START_TIME takes a strftime
// argument in Envoy (usage.rst: "%START_TIME(%Y/%m/%dT%H:%M:%S%z %s)%",
// "%START_TIME(%s.%3f)%"), CheckLogFormat lists START_TIME among the
// operators that take one, and the built-in proxy compiles it; but the
// validator splits the format at every '%', so the argument's own
// specifiers end the operator early and every real START_TIME argument is
// refused with 400. %% (a literal %) is refused the same way.
func TestReviewObsLogFormatStartTimeWithStrftime(t *testing.T) {
	for _, f := range []string{
		"%START_TIME(%s.%3f)% %RESPONSE_CODE%",
		"[%START_TIME(%Y/%m/%dT%H:%M:%S%z)%] %REQ(:PATH)%",
		"%RESPONSE_CODE% 100%% done",
	} {
		if err := CheckLogFormat(f); err != nil {
			t.Errorf("CheckLogFormat(%q): %v; Envoy and the built-in proxy accept it", f, err)
		}
	}
}
