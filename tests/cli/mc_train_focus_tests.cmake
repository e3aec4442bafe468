# SPDX-License-Identifier: Apache-2.0
# CTest cases of the mc_train_focus CLI at tiny size (included from examples/CMakeLists.txt).
# A fixture trains two throw-away base models with mc_train_base on license texts (the second
# with another vocabulary, for the tokenizer-mismatch case); then training + a bit-identical
# resume, and one case per refused input, each matched on its error tag.
set(_dir ${CMAKE_CURRENT_BINARY_DIR}/focus_cli)
set(_lic /usr/share/common-licenses)
set(_base_args --train ${_lic}/GPL-3 --valid ${_lic}/GPL-2 --max-train-bytes 40000 --d-model 32
               --layers 1 --heads 2 --d-ff 64 --seq-len 32 --batch 2 --eval-every 4)
add_test(NAME mc_train_focus.setup_base
         COMMAND ${CMAKE_COMMAND} -E env sh -c
                 "rm -rf '${_dir}' && \"$0\" \"$@\" --out '${_dir}/base' --vocab 300 --steps 4 && \"$0\" \"$@\" --out '${_dir}/base2' --vocab 280 --steps 1"
                 $<TARGET_FILE:mc_train_base> ${_base_args})
set_tests_properties(mc_train_focus.setup_base PROPERTIES FIXTURES_SETUP focus_base LABELS "cpu;example")

set(_focus_args --base ${_dir}/base/checkpoint.safetensors --tokenizer ${_dir}/base/tokenizer.mctok
                --train ${_lic}/GPL-3 --valid ${_lic}/GPL-2 --max-train-bytes 40000
                --gist-layers 1 --gist-d-ff 32 --lens-layers 1 --lens-d-model 16
                --gist-steps 3 --lens-steps 3 --contexts 8)
add_test(NAME mc_train_focus.train_and_resume_bit_identical
         COMMAND ${CMAKE_COMMAND} -DEXE=$<TARGET_FILE:mc_train_focus> -DDIR=${_dir}
                 "-DARGS=${_focus_args}" -P ${PROJECT_SOURCE_DIR}/tests/cli/train_and_resume.cmake)
set_tests_properties(mc_train_focus.train_and_resume_bit_identical PROPERTIES
                     FIXTURES_REQUIRED focus_base FIXTURES_SETUP focus_trained LABELS "cpu;example")

# mc_focus_error(<name> <regex> <args...>): the CLI must fail with an mc::Error matching <regex>.
function(mc_focus_error name regex)
  add_test(NAME mc_train_focus.error.${name} COMMAND mc_train_focus ${ARGN})
  set_tests_properties(mc_train_focus.error.${name} PROPERTIES
                       FIXTURES_REQUIRED "focus_base;focus_trained" LABELS "cpu;example"
                       PASS_REGULAR_EXPRESSION "${regex}" FAIL_REGULAR_EXPRESSION "checkpoints: ")
endfunction()
mc_focus_error(missing_base_file "\\[mc\\.safetensors\\.open_failed\\].*no_such_base"
               ${_focus_args} --rounds 1 --out ${_dir}/err --base ${_dir}/no_such_base.safetensors)
mc_focus_error(base_does_not_match_options
               "\\[mc\\.train\\.base_mismatch\\].*d_model = 32; this run says --d-model 48"
               ${_focus_args} --rounds 1 --out ${_dir}/err --d-model 48)
mc_focus_error(base_does_not_match_tokenizer
               "\\[mc\\.train\\.base_mismatch\\].*n_vocab = 300; this run says --tokenizer 280"
               ${_focus_args} --rounds 1 --out ${_dir}/err --tokenizer ${_dir}/base2/tokenizer.mctok)
mc_focus_error(base_missing_tensor_names "\\[mc\\.train\\.missing_tensor\\].*has no tensor 'embedding'"
               ${_focus_args} --rounds 1 --out ${_dir}/err --base ${_dir}/a/lens.safetensors
               --d-model 32 --layers 1 --heads 2 --d-ff 64)
mc_focus_error(resume_with_wrong_shapes
               "\\[mc\\.train\\.shape_mismatch\\] 'sets\\.0\\.blocks\\.0\\.mlp\\.w1'"
               ${_focus_args} --rounds 3 --out ${_dir}/a --resume --gist-d-ff 48)
